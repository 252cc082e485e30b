"""Loading the pretraining classifier's checkpoints: its own (strictly), or a foreign backbone and head.

:func:`load_classifier_checkpoint` is what ``TLAImageClassifier.init_weights`` runs for
``init_cfg=dict(type='Pretrained', checkpoint=...)``; :func:`check_head_readout` keeps a head off a
pooled feature it was not trained on (a class-token head on a token mean, or the reverse).
"""
from __future__ import annotations

from ..utils.checkpoint_io import load_checkpoint_file
from .layouts import load_backbone_checkpoint

__all__ = ['load_classifier_checkpoint', 'foreign_head_state', 'foreign_readout', 'check_head_readout',
           'load_head_state']


def load_classifier_checkpoint(model, path: str) -> None:
    """Load ``path`` into a :class:`~tlalign_mm.TLAImageClassifier` (see its ``init_weights``).

    A checkpoint of this classifier (keys under ``backbone.``) must fit every tensor (a label
    rule's training-only ``label_rule.*`` may be extra); backbone keys that an earlier version of
    the backbone named otherwise are renamed first (its ``rename_former_keys``: PVT's flat
    ``block{i}.{j}`` names).  Any other checkpoint loads its backbone through
    :func:`~tlalign_mm.models.layouts.load_backbone_checkpoint` and a head of this head's shape.

    Raises:
        ValueError: a classifier checkpoint that does not fit, a backbone the loader refuses,
            or a head of another readout (:func:`check_head_readout`).
        FileNotFoundError, pickle.UnpicklingError: see :func:`load_checkpoint_file`.
    """
    from mmengine.logging import print_log

    ckpt = load_checkpoint_file(path)
    sd = ckpt.get('state_dict', ckpt.get('model', ckpt))
    if any(k.startswith('backbone.') for k in sd):
        own = model.state_dict()
        # checkpoints written before the head became a module: head.{weight,bias} -> head.fc.*
        sd = {('head.fc.' + k[5:] if k in ('head.weight', 'head.bias') and 'head.fc.weight' in own else k): v
              for k, v in sd.items()}
        # checkpoints written before a backbone renamed its parameters (PVT's stages; TLABackbone)
        rename = getattr(model.backbone, 'rename_former_keys', None)
        if rename is not None:
            rename(sd, 'backbone.')
        missing = [k for k in own if k not in sd and not k.startswith('data_preprocessor.')]
        # a label rule's training-only parameters (DenseTLAlign's token head) may be left out
        unexpected = [k for k in sd if k not in own and not k.startswith('label_rule.')]
        shape = [f'{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
                 if k in sd and sd[k].shape != v.shape]
        if missing or unexpected or shape:
            raise ValueError(f'{path}: the classifier checkpoint does not fit this model '
                             f'(missing {missing[:10]}, unexpected {unexpected[:10]}, shapes {shape[:10]}); '
                             'load a checkpoint of the same config, or only its backbone with '
                             "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...)")
        model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
        print_log(f'{type(model).__name__}: loaded all {len(own)} tensors from {path!r}', logger='current')
        return
    if foreign_head_state(model, sd):                    # refuse before loading anything
        check_head_readout(model, sd, repr(path))
    load_backbone_checkpoint(model.backbone, ckpt)
    note = load_head_state(model, sd, repr(path))
    print_log(f'{type(model).__name__}: backbone loaded from {path!r}; {note}', logger='current')


def foreign_head_state(model, state_dict: dict) -> dict | None:
    """The checkpoint's ``head.*`` in this head's names, or None when it has no head of this
    head's shape (nothing would be loaded)."""
    head = {}
    for k, v in state_dict.items():
        if isinstance(k, str) and k.startswith('head.') and not k.startswith('head_dist'):
            name = k[len('head.'):]
            head[name if name.startswith('fc.') else 'fc.' + name] = v
    own = model.head.state_dict()
    if head and all(k in head and head[k].shape == v.shape for k, v in own.items()):
        return {k: head[k] for k in own}
    return {} if head else None


def foreign_readout(state_dict) -> tuple[str, str]:
    """The pooled feature a foreign checkpoint's head read, told by its keys (at the backbone's root):
    ``'cls_token'`` with ``cls_token`` (official DeiT / TL-Align, timm ViT, the PVT v1 release),
    unless ``fc_norm`` is there too (timm's token-mean ViT); else ``'avg_featmap'`` (Swin, PVT v2,
    mmdet's PVT).  Returns (readout, the key that tells, in words)."""
    if 'cls_token' in state_dict and 'fc_norm.weight' not in state_dict:
        return 'cls_token', "the checkpoint has 'cls_token'"
    if 'cls_token' in state_dict:
        return 'avg_featmap', "the checkpoint has 'cls_token' and 'fc_norm' (timm's token-mean ViT)"
    return 'avg_featmap', "the checkpoint has no 'cls_token'"


def check_head_readout(model, state_dict: dict, source: str = 'the checkpoint') -> None:
    """Refuse a foreign head trained on another pooled feature than this model's.

    A foreign checkpoint (keys at the backbone's root) tells its readout by its keys: with
    ``cls_token`` its head read the class token (official DeiT / TL-Align, timm ViT, the PVT
    v1 release, whai362/PVT ``classification/pvt.py``), unless ``fc_norm`` is there too
    (timm's token-mean ViT); without ``cls_token`` it read the token mean (Swin, PVT v2
    ``classification/pvt_v2.py``, mmdet's PVT).  This model reads the class token when the
    backbone's ``out_type`` is ``'cls_token'``, else the token mean.  A checkpoint of this
    classifier (keys under ``backbone.``) says nothing about its readout and passes.

    Raises:
        ValueError: the two readouts differ (names both, and the key that tells).
    """
    if any(isinstance(k, str) and k.startswith('backbone.') for k in state_dict):
        return
    readout, why = foreign_readout(state_dict)
    theirs = 'the class token' if readout == 'cls_token' else 'the token mean'
    ours = 'the class token' if model.pool_type == 'cls_token' else 'the token mean'
    if theirs != ours:
        raise ValueError(
            f"{source}: its head was trained on {theirs} ({why}) but this model's pooled feature is {ours} "
            f"(backbone out_type={model.pool_type!r}); the head would read a feature it was never trained on. "
            "Build the backbone with the checkpoint's readout (PVT v1 release: out_type='cls_token'), or load "
            "the backbone alone (model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...)) and train "
            'a new head')


def load_head_state(model, state_dict: dict, source: str = 'the checkpoint') -> str:
    """Load the classifier head of a foreign checkpoint when it has this head's shape.

    ``head.weight`` / ``head.bias`` (official DeiT / Swin / PVT, timm ViT) and ``head.fc.*``
    (timm Swin, ours) are both read.  Returns what happened, for the log: ``'head loaded'``,
    or why the head keeps its initialisation (no head in the checkpoint, or another class
    count).

    Raises:
        ValueError: a head that would load but was trained on another readout
            (:func:`check_head_readout`: a class-token checkpoint onto a token-mean model,
            or the reverse; ``source`` names the checkpoint in the message).
    """
    head = foreign_head_state(model, state_dict)
    if head:
        check_head_readout(model, state_dict, source)
        model.head.load_state_dict(head)
        return 'head loaded'
    return ('the head is newly initialised '
            f"({'no head in the checkpoint' if head is None else 'its shape differs'})")
