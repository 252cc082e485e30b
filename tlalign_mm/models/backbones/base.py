"""What the DeiT, Swin and PVT backbones share: the declared contract every reader relies on, weight
init, strict pretrained loading, freezing, the label-alignment switches."""
from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Sequence

import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import trunc_normal_

from ...align import check_attn_options
from ...registry import FUNCTIONS

__all__ = ['TLABackbone', 'TLALabelAttention', 'FeatureInfo']


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One stage a backbone returns, as an entry of timm's ``feature_info``.

    Attributes:
        num_chs: channels C of the stage's output.
        reduction: input pixels per output cell along each side, the stage's stride (16 for every
            DeiT-S/16 block; 4, 8, 16, 32 for the Swin and PVT stages).
        module: the module whose output it is (``'blocks.11'``, ``'norm3'``, ``'stages.3'``).
    """

    num_chs: int
    reduction: int
    module: str


class TLABackbone(BaseModule, metaclass=abc.ABCMeta):
    """Base of the label-carrying backbones (mmengine ``BaseModule``), and the contract they declare.

    What every reader (the classifier, its head and label rules, the tracing tools, the downstream
    config checks) takes from a backbone, instead of guessing it:

    * :attr:`feature_info`: channels and reduction of every returned stage (``out_indices``, in
      order), as timm's ``feature_info``; :attr:`num_features`: the width of the last returned
      stage, timm's meaning (the pooled feature a head reads);
    * ``patch_size`` (first-stage token side, pixels), ``num_prefix_tokens`` (class / distillation
      tokens), :meth:`token_grid` (the first-stage token grid of an input size, with the backbone's
      rounding rule) and :meth:`num_tokens`;
    * ``out_type``: what ``forward`` returns per stage; :meth:`all_tokens_out_type`: the value under
      which the last output holds every token (for a rule that reads them);
    * :meth:`label_blocks` / :meth:`label_block_ids`: the label-carrying blocks in forward order and
      their (stage, index) pairs; :attr:`carries_labels`: whether the backbone can carry token
      labels at all (a plain backbone trains on the area target only);
    * :attr:`share_from_mask`: the first stage pools the pixel-level mixing mask itself
      (:meth:`first_stage_mix`);
    * :meth:`rename_former_keys` and :meth:`adapt_checkpoint`: what the checkpoint loaders ask of
      the model (names it once had, what depends on its configuration).

    Subclasses define the layers, ``forward(x, token_labels=None)``, ``_stage_blocks()``,
    :attr:`feature_info`, :meth:`token_grid` and ``_frozen_modules()``, and set ``patch_size``,
    ``num_prefix_tokens``, ``out_type`` and ``out_indices``.

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH, prefix=None)`` loads through
    :func:`tlalign_mm.checkpoint.load_backbone_checkpoint`, which recognises the official
    DeiT / TL-Align, official Swin, timm and mmengine layouts, resizes position embeddings and
    relative-position tables, and raises when the checkpoint matches under 90% of the
    backbone's parameters (mmengine's own ``PretrainedInit`` loads with ``strict=False`` and
    would load nothing silently).  Any other ``init_cfg`` is handed to mmengine.

    Args:
        frozen_stages: freeze the stem (-1: nothing frozen) and the first stages; see subclass.
        norm_eval: keep normalisation layers in eval mode while training.  The backbones here
            use LayerNorm only, which has no running statistics, so this matters only for
            BatchNorm layers a subclass may add; it is accepted for mmseg/mmdet config parity.
        with_cp: gradient checkpointing of every block (saves activation memory, costs one
            extra forward).
    """

    #: preset name -> arch dict; alias -> preset name; keys an arch dict must have; out types
    arch_zoo: dict = {}
    arch_alias: dict = {}
    arch_keys: tuple = ()
    OUT_TYPES: tuple = ()
    #: whether the backbone carries token labels through its attention
    carries_labels: bool = True
    #: whether the first stage pools the pixel-level mixing mask itself (PVT v2's overlapping window)
    share_from_mask: bool = False
    #: first-stage token side in pixels, class / distillation tokens, output kind (every subclass sets them)
    patch_size: int
    num_prefix_tokens: int = 0
    out_type: str

    def __init__(self, frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 init_cfg=None, pretrained: str | None = None):
        if pretrained is not None:   # mmseg/mmdet's older shorthand for init_cfg
            if init_cfg is not None:
                raise ValueError('give either pretrained or init_cfg, not both')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

    @classmethod
    def resolve_arch(cls, arch: str | dict) -> dict:
        """Arch dict of a preset name (case-insensitive, aliases allowed) or a given dict.

        Raises:
            ValueError: an unknown name (the message lists the known ones) or a dict that lacks
                one of ``arch_keys``.
        """
        if isinstance(arch, str):
            key = cls.arch_alias.get(arch.lower(), arch.lower())
            if key not in cls.arch_zoo:
                raise ValueError(f'unknown arch {arch!r} for {cls.__name__}; choose one of '
                                 f'{sorted(cls.arch_zoo) + sorted(cls.arch_alias)} or give a dict')
            arch = cls.arch_zoo[key]
        missing = set(cls.arch_keys) - set(arch)
        if missing:
            raise ValueError(f'arch dict lacks {sorted(missing)}')
        return dict(arch)

    @staticmethod
    def resolve_out_indices(out_indices: int | Sequence[int], n: int, unit: str) -> list[int]:
        """``out_indices`` (an int or a sequence; negative ones count from the end) as the sorted,
        distinct indices in ``0 .. n - 1`` that ``forward`` returns, in that order (as mmseg's and
        mmdet's backbones return them: in depth order, each once).

        Raises:
            ValueError: none given, or one outside ``-n .. n - 1`` (names it, ``n`` and ``unit``).
        """
        given = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        if not given:
            raise ValueError(f'out_indices is empty: name at least one of the {n} {unit} to return')
        if bad := [i for i in given if not -n <= i < n]:
            raise ValueError(f'out_indices {bad[0]} is out of range for {n} {unit} (give 0 .. {n - 1}, or '
                             'negative ones from the end)')
        return sorted({i % n for i in given})

    # -- the contract -----------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def feature_info(self) -> list[FeatureInfo]:
        """One :class:`FeatureInfo` per returned stage (``out_indices``), in order."""

    @property
    def num_features(self) -> int:
        """The width of the last returned stage, the pooled feature a classification head reads
        (timm's ``num_features``)."""
        return self.feature_info[-1].num_chs

    @abc.abstractmethod
    def token_grid(self, img_hw) -> tuple[int, int]:
        """The first-stage patch-token grid (rows, cols) for an ``img_hw`` = (H, W) input; each
        backbone documents its rounding rule."""

    def num_tokens(self, img_hw) -> int:
        """Rows N a ``token_labels`` tensor must have for an ``img_hw`` input: the prefix tokens, then
        the :meth:`token_grid` tokens."""
        h, w = self.token_grid(img_hw)
        return self.num_prefix_tokens + h * w

    @classmethod
    def all_tokens_out_type(cls, out_type: str) -> str:
        """The ``out_type`` whose last output holds every token of a backbone configured with
        ``out_type`` (for a label rule that reads them): ``'raw'`` (tokens, prefix rows first) or
        ``'featmap'`` (B, C, H, W).  Default ``'featmap'``; a backbone with prefix tokens says
        ``'raw'``."""
        return 'featmap'

    @abc.abstractmethod
    def _stage_blocks(self) -> list:
        """The label-carrying blocks of each stage that runs (a list of module lists, stage 0 first)."""

    def label_blocks(self) -> list:
        """The blocks that can align labels, in forward order (stages after the last returned one
        do not run and are not listed)."""
        return [blk for stage in self._stage_blocks() for blk in stage]

    def label_block_ids(self) -> list[tuple[int, int]]:
        """(stage, index in the stage) of each block of :meth:`label_blocks`, stages counted from 0."""
        return [(s, j) for s, stage in enumerate(self._stage_blocks()) for j in range(len(stage))]

    def first_stage_mix(self, mix):
        """``mix`` (a :class:`~tlalign_mm.structures.MixResult`) with ``share_b`` as this backbone's first
        stage sees it.

        The mixer reports each ``patch_size`` cell's share of image B: the first-stage share of
        DeiT, Swin and PVT v1.  A backbone whose first patch embedding looks further (PVT v2: a
        7x7 convolution with stride 4 and padding 3) sets ``share_from_mask`` and pools the pixel
        mask itself (``token_share(mix.mask)``, the rule of its later patch embeddings).  Every
        rule's initial labels are affine in the share, so this equals pooling pixel-level labels.
        Runs on the device, never waits for it.

        Raises:
            ValueError: such a backbone and a mix without its pixel mask.
        """
        if not self.share_from_mask:
            return mix
        if mix.mask is None:
            raise ValueError(f'{type(self).__name__} pools the pixel-level mixing mask over its first patch '
                             "embedding's window, but the mix has none: build the mixer with return_mask=True")
        return dataclasses.replace(mix, share_b=self.token_share(mix.mask))

    def check_token_grid(self, mix, img_hw) -> None:
        """Raise ``ValueError`` when the mixer's token grid (``mix.share_b``: (B, N)) is not this
        backbone's for ``img_hw`` inputs."""
        n = self.num_tokens(img_hw) - self.num_prefix_tokens
        if mix.share_b.shape[1] != n:
            raise ValueError(
                f'the mixer reports {mix.share_b.shape[1]} tokens (patch_size={mix.patch_size}) but the '
                f'backbone has {n} patch tokens for {tuple(img_hw)} inputs: set the data_preprocessor '
                f"mixer's patch_size to the backbone's ({self.patch_size})")

    @classmethod
    def check_out_type(cls, out_type: str) -> str:
        """Return ``out_type`` or raise ValueError naming the allowed values."""
        if out_type not in cls.OUT_TYPES:
            raise ValueError(f'out_type must be one of {cls.OUT_TYPES}, got {out_type!r}')
        return out_type

    # -- init ----------------------------------------------------------------------------
    @staticmethod
    def _init_layer(m: nn.Module) -> None:
        """timm's DeiT / Swin initialisation: trunc-normal(0.02) linears, unit LayerNorms."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _init_extra(self) -> None:
        """Initialise parameters that are not layers (tokens, tables); subclass hook."""

    def init_weights(self) -> None:
        cfg = self.init_cfg
        # Initialise everything first: a checkpoint may not provide every tensor (a distilled
        # token, a patch-embedding bias), and those must not keep constructor defaults.
        self.apply(self._init_layer)
        self._init_extra()
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            # tlalign_mm.checkpoint's loader, named through the registry (the package sits above the models)
            load = FUNCTIONS.get('load_backbone_checkpoint')
            report = load(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                          map_location=cfg.get('map_location', 'cpu'))
            print_log(f'{type(self).__name__}: {report.summary()}', logger='current')
            self._is_init = True
            return
        if cfg is not None:
            super().init_weights()
        self._is_init = True

    # -- checkpoints written before a rename ------------------------------------------------
    def rename_former_keys(self, state_dict: dict, prefix: str = '') -> None:
        """Rename, in place, keys under ``prefix`` that name this backbone's parameters as an
        earlier version of it did (PVT: the flat names it had before its stages).  Subclass hook;
        the base renames nothing.

        ``load_state_dict`` runs it (``_load_from_state_dict``, under the backbone's own
        prefix, e.g. ``backbone.`` in a classifier or segmentor), and so does the classifier's
        loader (:func:`tlalign_mm.checkpoint.load_classifier_checkpoint`) before it checks
        the keys.

        Raises:
            ValueError: a former key and the key it renames to are both present.
        """

    def adapt_checkpoint(self, state_dict: dict, source: str = '<state_dict>') -> tuple[dict, list[str]]:
        """Fit a checkpoint, already in our names, to what depends on this model's configuration,
        before :func:`tlalign_mm.checkpoint.load_backbone_checkpoint` checks and loads it.  Subclass
        hook (PVT: its class token); the base keeps every key.

        Args:
            state_dict: our keys (after the checkpoint package's read filter); not modified.
            source: the checkpoint's name, for error messages.

        Returns:
            (state dict, dropped keys).

        Raises:
            ValueError: a checkpoint this configuration cannot read (the subclass names why).
        """
        return dict(state_dict), []

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.rename_former_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- training switches -----------------------------------------------------------------
    def set_alignment(self, blocks='all', residual: bool = True) -> list[int]:
        """Choose which blocks align the labels, and how (the ablations of the TL-Align paper,
        Table 8).

        A block that does not align passes the labels on unchanged; patch merging still pools
        them.  Features are never affected.

        Args:
            blocks: 'all' (the paper), 'last' (the last block that runs only: one layer's
                attention), or a sequence of block indices counted over :meth:`label_blocks`
                (negative indices count from the end).
            residual: average each block's aligned labels with its input labels,
                ``(Y + A Y) / 2`` (the paper's residual rule), or take ``A Y`` alone (False).

        Returns:
            The aligning block indices, sorted.

        Raises:
            ValueError: an unknown name, an empty list or an index out of range (the message
                names the number of blocks).
        """
        all_blocks = self.label_blocks()
        n = len(all_blocks)
        if isinstance(blocks, str):
            if blocks not in ('all', 'last'):
                raise ValueError(f"align blocks must be 'all', 'last' or a list of block indices, got {blocks!r}")
            chosen = list(range(n)) if blocks == 'all' else [n - 1]
        else:
            chosen = []
            for i in blocks:
                if int(i) != i or not -n <= i < n:
                    raise ValueError(f'align block index {i!r} is out of range for the {n} blocks that run')
                chosen.append(int(i) % n)
            if not chosen:
                raise ValueError('align blocks: an empty list aligns nothing; use the area target instead')
        chosen = sorted(set(chosen))
        for i, blk in enumerate(all_blocks):
            blk.align_labels = i in chosen
            blk.label_residual = bool(residual)
        return chosen

    @contextlib.contextmanager
    def alignment(self, blocks='all', residual: bool = True):
        """Context manager: :meth:`set_alignment` for the block, then the previous settings back
        (the analysis tools trace TL-Align on a model trained with another rule)."""
        saved = [(b.align_labels, b.label_residual) for b in self.label_blocks()]
        try:
            self.set_alignment(blocks, residual)
            yield self
        finally:
            for b, (align, res) in zip(self.label_blocks(), saved):
                b.align_labels, b.label_residual = align, res

    def run_block(self, blk: nn.Module, x, *args):
        """``blk(x, *args)``, through gradient checkpointing when ``with_cp`` and ``x`` needs grad."""
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(blk, x, *args, use_reentrant=False)
        return blk(x, *args)

    def _frozen_modules(self) -> list[nn.Module | nn.Parameter]:
        """Modules and parameters frozen by ``frozen_stages``; subclass hook."""
        return []

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            if isinstance(m, nn.Parameter):
                m.requires_grad = False
            else:
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


class TLALabelAttention(nn.Module):
    """What the label-carrying attentions share (DeiT's attention, Swin's window attention, PVT's
    spatial-reduction attention): the checks, the head split and scale, the attention options
    (``attn_impl``, ``label_dtype``), and the output projection.

    A subclass registers its own input projections (``qkv``; ``q`` / ``kv``; Swin's bias table
    first) and then calls :meth:`add_output_projection`, so that the modules keep the release's
    order (and the seeded initialisation draws theirs).

    Args:
        dim: C, divisible by ``num_heads``.
        num_heads: H.
        attn_impl: how the attention is computed, labels or not: 'auto' (default: the
            materialised softmax on a CPU with bfloat16 / float16 matrix units under low-precision
            autocast, the fused kernel elsewhere), 'fused', 'materialised' or 'split'
            (:func:`tlalign_mm.align.resolve_attn_impl`, ``tlalign_mm.align.propagate``).
        label_dtype: 'auto' or 'float32' (:data:`tlalign_mm.align.LABEL_DTYPES`).

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``; a bad label option.
    """

    def __init__(self, dim: int, num_heads: int, attn_impl: str = 'auto', label_dtype: str = 'auto'):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dims {dim} is not divisible by num_heads {num_heads}')
        check_attn_options(attn_impl, label_dtype)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_impl = attn_impl
        self.label_dtype = label_dtype

    def add_output_projection(self, dim: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        """``attn_drop``, ``proj`` (C -> C) and ``proj_drop``, after the input projections."""
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
