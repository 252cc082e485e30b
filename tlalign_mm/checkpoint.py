"""Pretrained checkpoints for the TL-Align backbones: the public face of safe loading, layout conversion,
resizing and export.

Where each part lives (imports point one way: ``utils.checkpoint_io`` <- ``models.layouts`` <-
the backbones and ``models.loading`` <- this module):

* :func:`load_checkpoint_file` (``tlalign_mm/utils/checkpoint_io.py``): reading a file safely;
* the layouts, their detection, conversion and resizing, and :func:`load_backbone_checkpoint`
  (``tlalign_mm/models/layouts.py``, filled by each backbone file);
* the classifier's own checkpoints and the head readout check (``tlalign_mm/models/loading.py``);
* :func:`export_backbone`, here.


Users bring weights in many layouts; this module recognises them, renames them into the
parameter names of :class:`~tlalign_mm.TLAVisionTransformer` / :class:`~tlalign_mm.TLASwinTransformer`
/ :class:`~tlalign_mm.TLAPyramidVisionTransformer` ("our" layout, called ``'tlalign'``), loads the
pretraining classifier's own checkpoints (:func:`load_classifier_checkpoint`, with the head readout
check), resizes what legitimately depends on the input or window
size, and refuses to load anything that does not fit (mmengine's ``PretrainedInit`` loads with
``strict=False`` and so loads nothing, silently, from an unconverted checkpoint).

Layouts recognised (:func:`detect_layout`; each backbone file recognises and renames its own
family with its ``detect_layout`` / ``checkpoint_filter_fn``, as timm's model files do):

``'tlalign'``
    Ours: the ViT keys below without a classifier head, or Swin keys with output norms
    ``norm{i}`` (what :func:`export_backbone` writes).
``'timm-vit'``
    Official DeiT (facebookresearch/deit) and TL-Align (Euphoria16/TL-Align) releases and timm's
    ``VisionTransformer``: ``patch_embed.proj``, ``cls_token`` (``dist_token``), ``pos_embed``,
    ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``, ``head``
    (``head_dist``, ``fc_norm``).  Same names as ours; heads are dropped.
``'official-swin'``
    microsoft/Swin-Transformer: ``layers.{i}.blocks.{j}...``, ``layers.{i}.downsample`` at the
    end of stage ``i``, final ``norm``, ``head``, buffers ``relative_position_index`` /
    ``attn_mask``.  The final ``norm`` becomes ``norm{last stage}``.
``'timm-swin'``
    timm >= 0.9 ``SwinTransformer``: the patch merging sits at the start of stage ``i`` (i >= 1),
    ``head.fc``.  Its merge order is the official one, so only names move.
``'mmseg-vit'``
    mmseg 1.x ``VisionTransformer`` (``tools/model_converters/vit2mmseg.py`` writes it):
    ``patch_embed.projection``, ``layers.{i}.{ln1,ln2}``,
    ``layers.{i}.attn.attn.{in_proj_weight,in_proj_bias,out_proj}`` (``nn.MultiheadAttention``,
    q/k/v stacked as in ``qkv``), ``layers.{i}.ffn.layers.{0.0,1}``, final ``ln1``.
``'mmpretrain-vit'``
    mmpretrain / mmcls ``VisionTransformer``: as mmseg but ``layers.{i}.attn.{qkv,proj}``.
``'mm-swin'``
    mmseg / mmdet / mmpretrain ``SwinTransformer`` (``swin2mmseg.py``, mmdet's
    ``swin_converter``): ``patch_embed.projection``, ``stages.{i}.blocks.{j}.attn.w_msa.*``,
    ``ffn.layers.{0.0,1}``, ``stages.{i}.downsample`` at the end of stage ``i``, ``norm{i}``.
    Its patch merging gathers the 2x2 children with ``nn.Unfold``: input channel
    ``c * 4 + k`` with ``k`` the row-major kernel offset (0,0), (0,1), (1,0), (1,1), where the
    official order is ``j * C + c`` with ``j`` = (0,0), (1,0), (0,1), (1,1); the downsample
    ``reduction`` / ``norm`` are permuted back.
``'official-pvt'``
    whai362/PVT ``classification/pvt.py`` / ``pvt_v2.py``: ``patch_embed{i}``, ``pos_embed{i}``
    (v1), ``block{i}.{j}``, ``norm`` (v1) or ``norm{i}`` (v2), ``head``, v1's ``cls_token``.  The
    names are ours; the class token stays for a class-token model and is dropped with its
    ``pos_embed4`` row for a dense one.
``'mm-pvt'``
    mmdet ``PyramidVisionTransformer(V2)`` (``pvt_convert`` of the release): ``layers.{i}.{0,1,2}``
    (patch embedding, blocks, norm), converted on load by the PVT backbone's filter.

Checkpoints are read by mmengine's ``CheckpointLoader`` (local paths, ``https://`` and every
other scheme mmseg / mmdet configs use) with every ``torch.load`` forced to ``weights_only=True``;
the non-tensor objects mmengine keeps in its checkpoints (``HistoryBuffer``, numpy arrays /
scalars / dtypes) are allow-listed by :func:`~tlalign_mm.utils.torch_compat.mmengine_safe_globals` (the one list shared
with the process-wide registration done at ``import tlalign_mm``; re-exported here), never by
unpickling arbitrary code.
"""
from __future__ import annotations

import os

import torch

from .models import backbones as _backbones  # noqa: F401  (the backbone files register their layouts)
from .models.layouts import (
    LAYOUTS,
    LoadReport,
    _detect_or_raise,
    convert_state_dict,
    detect_layout,
    extract_state_dict,
    filter_state_dict,
    has_key,
    is_recomputed_buffer,
    layout_families,
    load_backbone_checkpoint,
    register_layouts,
    rename_key,
    resize_pos_embed,
    resize_relative_position_bias_table,
    stage_ids,
)
from .models.loading import check_head_readout, foreign_head_state, load_classifier_checkpoint, load_head_state
from .utils.checkpoint_io import load_checkpoint_file
from .utils.torch_compat import mmengine_safe_globals
from .version import __version__

__all__ = ['LAYOUTS', 'LoadReport', 'mmengine_safe_globals', 'load_checkpoint_file', 'has_key', 'stage_ids',
           'is_recomputed_buffer', 'filter_state_dict', 'rename_key', 'register_layouts', 'layout_families',
           'extract_state_dict', 'detect_layout', 'convert_state_dict', 'resize_pos_embed',
           'resize_relative_position_bias_table', 'load_backbone_checkpoint', 'export_backbone',
           'load_classifier_checkpoint', 'foreign_head_state', 'check_head_readout', 'load_head_state']


def export_backbone(src_checkpoint_path: str | os.PathLike, dst_path: str | os.PathLike,
                    prefix: str | None = None) -> dict:
    """Write a backbone-only checkpoint in our layout, for ``init_cfg=dict(type='Pretrained', ...)``.

    The file holds ``{'state_dict': converted, 'meta': {'source', 'layout', 'prefix',
    'tlalign_mm_version'}}`` with keys as the backbones name their parameters (no prefix):
    heads and recomputed buffers dropped, mm / timm-swin layouts renamed and reordered, the
    Swin final ``norm`` renamed ``norm{last}``.  Sizes are kept (resizing happens at load time,
    for the model that loads it).

    Args:
        src_checkpoint_path: any checkpoint :func:`load_backbone_checkpoint` reads.
        dst_path: output file (parent folders are created).
        prefix: as :func:`extract_state_dict`.

    Returns:
        dict with ``layout``, ``num_keys`` (written), ``ignored`` (dropped source keys),
        ``prefix`` and ``dst``.

    Raises:
        FileNotFoundError, pickle.UnpicklingError: see :func:`load_checkpoint_file`.
        ValueError: prefix with no keys, or unrecognised layout.
    """
    src = os.fspath(src_checkpoint_path)
    dst = os.fspath(dst_path)
    sd, used_prefix = extract_state_dict(load_checkpoint_file(src), prefix)
    layout = _detect_or_raise(sd, src, used_prefix, 'pass --prefix')
    converted, layout, ignored = convert_state_dict(sd, layout)
    converted = {k: v.contiguous() for k, v in converted.items()}
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    torch.save({'state_dict': converted,
                'meta': {'source': src, 'layout': layout, 'prefix': used_prefix,
                         'tlalign_mm_version': __version__}}, dst)
    return {'layout': layout, 'num_keys': len(converted), 'ignored': ignored,
            'prefix': used_prefix, 'dst': dst}
