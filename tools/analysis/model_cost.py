"""Parameters and FLOPs of the models our configs build, and the stock OpenMMLab backbone to compare with.

The shared module of the cost tools in ``tools/analysis/`` (``get_flops.py``,
``benchmark_downstream.py``, ``benchmark_label_path.py``), imported as ``model_cost`` with this
folder on ``sys.path`` (a script's own folder is); not part of the ``tlalign_mm`` package.  It
reaches ``config_checks`` and ``launch`` in ``tools/`` through ``_common``.

What is counted, and how:

* the model of any of our configs -- pretraining (``TLAImageClassifier``, scope ``tlalign_mm``),
  mmseg (``EncoderDecoder`` + UperNet) or mmdet (``CascadeRCNN``) -- is built for analysis by
  :func:`build_analysis_model`: the codebase's modules registered, ``SyncBN`` -> ``BN``, the
  backbone's ``init_cfg`` / ``pretrained`` dropped (no checkpoint is read), eval mode;
* a batch in the format the model's data preprocessor takes comes from :func:`make_dummy_batch`
  (random uint8 images plus random annotations: a class label, a semantic map, or a few boxes
  with masks);
* FLOPs are those of mmengine's :class:`~mmengine.analysis.FlopAnalyzer` (a JIT trace) in the
  model's ``'tensor'`` mode, one multiply-add counted as one FLOP (the fvcore / mmengine
  convention), plus :func:`sdpa_flop_jit`, a handle for ``aten::scaled_dot_product_attention``:
  mmengine has none, so without it the fused attention of our backbones would be silently left
  out (and ours would look cheaper than the stock backbones, whose attention is two matmuls);
* :func:`stock_backbone_config` / :func:`with_stock_backbone` swap our backbone for the stock
  mmseg / mmdet backbone of the same architecture (``tools/analysis/get_flops.py
  --compare-stock``, ``tools/analysis/benchmark_downstream.py``).

Only torch, mmengine and the tools' ``config_checks`` / ``launch`` are imported at module level;
mmseg / mmdet are imported inside the functions that need them (those of an mmseg / mmdet config).
"""
from __future__ import annotations

import copy
import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import _common  # noqa: F401  (first, as isort has it: tools/analysis/_common.py puts tools/ on sys.path)
import torch
import torch.nn as nn
from config_checks import cfg_get, sync_bn_to_bn  # tools/config_checks.py
from launch import register_scope  # tools/launch.py

__all__ = ['ModelCost', 'task_kind', 'build_analysis_model', 'default_input_shape', 'apply_input_shape',
           'make_dummy_batch', 'sdpa_flop_jit', 'SDPA_OPS', 'flop_analyzer', 'measure_cost', 'config_cost',
           'stock_backbone_config', 'with_stock_backbone', 'DETECTION_DEFAULT_SHAPE']

#: (H, W) of mmdet's ``get_flops`` default input (mmdet 2.x ``--shape 1280 800``: a 3 x 1280 x 800 tensor)
DETECTION_DEFAULT_SHAPE = (1280, 800)

#: the traced op names that :func:`sdpa_flop_jit` counts (``F.scaled_dot_product_attention`` is
#: recorded as the first one; the others are its backend kernels, listed in case a caller uses them)
SDPA_OPS = ('aten::scaled_dot_product_attention', 'aten::_scaled_dot_product_flash_attention',
            'aten::_scaled_dot_product_efficient_attention', 'aten::_scaled_dot_product_cudnn_attention',
            'aten::_scaled_dot_product_flash_attention_for_cpu')

# ------------------------------------------------------------------------------------- config
def _type_name(t: Any) -> str:
    """'TLASwinTransformer' from 'TLASwinTransformer', 'mmseg.TLASwinTransformer' or a class."""
    if isinstance(t, type):
        return t.__name__
    return str(t).rsplit('.', 1)[-1]


def task_kind(cfg: Any) -> str:
    """What a config trains: ``'seg'`` (``default_scope='mmseg'``), ``'det'`` (``'mmdet'``) or ``'cls'``
    (anything else: our pretraining configs, scope ``'tlalign_mm'``)."""
    scope = cfg_get(cfg, 'default_scope')
    return {'mmseg': 'seg', 'mmdet': 'det'}.get(scope, 'cls')


def _pair(v: Any, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return int(v[0]), int(v[1])
    raise ValueError(f'{what} must be an int or a pair (H, W) of ints, got {v!r}')


def default_input_shape(cfg: Any) -> tuple[tuple[int, int], str]:
    """The (H, W) input size, in pixels, that FLOPs are quoted at for ``cfg``, and where it comes from.

    * mmseg: ``model.data_preprocessor.size`` (the training crop, e.g. 512 x 512), else the
      top-level ``crop_size``, else a slide-test ``model.test_cfg.crop_size``;
    * mmdet: :data:`DETECTION_DEFAULT_SHAPE` (1280 x 800, mmdet's ``get_flops`` default);
    * pretraining: the backbone's ``img_size`` (224).

    Returns:
        ``((H, W), source)``, ``source`` naming the config field (or the convention) used.

    Raises:
        ValueError: an mmseg config without any of those fields (pass the shape explicitly).
    """
    kind = task_kind(cfg)
    model = cfg_get(cfg, 'model') or {}
    if kind == 'det':
        return DETECTION_DEFAULT_SHAPE, 'mmdet get_flops default (H=1280, W=800)'
    if kind == 'seg':
        candidates = (('model.data_preprocessor.size', cfg_get(cfg_get(model, 'data_preprocessor') or {}, 'size')),
                      ('crop_size', cfg_get(cfg, 'crop_size')),
                      ('model.test_cfg.crop_size', cfg_get(cfg_get(model, 'test_cfg') or {}, 'crop_size')))
        for name, v in candidates:
            if v is not None:
                return _pair(v, name), name
        raise ValueError('the mmseg config sets none of model.data_preprocessor.size, crop_size, '
                         'model.test_cfg.crop_size: give the input shape explicitly (--shape H W)')
    img = cfg_get(cfg_get(model, 'backbone') or {}, 'img_size', 224)
    return _pair(img, 'model.backbone.img_size'), 'model.backbone.img_size'


def apply_input_shape(cfg: Any, shape: Sequence[int]) -> list[str]:
    """Make ``cfg`` train at ``shape`` (H, W) where it fixes its own input size, in place.

    Only mmseg configs do: their ``SegDataPreProcessor`` pads every training batch to
    ``model.data_preprocessor.size``, so that field is set to ``shape`` (a larger size would
    pad a ``shape`` batch; one smaller than an image is a no-op anyway).  Evaluation is not
    affected (mmseg pads test batches only to ``test_cfg``'s size).

    Returns:
        the config paths changed.
    """
    h, w = _pair(shape if isinstance(shape, int) else tuple(shape), 'shape')
    changed = []
    pre = cfg_get(cfg_get(cfg, 'model') or {}, 'data_preprocessor')
    if task_kind(cfg) == 'seg' and pre is not None and cfg_get(pre, 'size') is not None:
        if tuple(pre['size']) != (h, w):
            pre['size'] = (h, w)
            changed.append('model.data_preprocessor.size')
    return changed


def _register(cfg: Any) -> str:
    """Import tlalign_mm (our registries, and our backbones in mmseg / mmdet) and the modules of the
    config's codebase; make its scope the default.  Returns the scope."""
    from mmengine.registry import init_default_scope

    import tlalign_mm  # noqa: F401  (registers TLA* into tlalign_mm / mmseg / mmdet MODELS)

    scope = register_scope(cfg) or 'tlalign_mm'
    init_default_scope(scope)
    return scope


def build_analysis_model(cfg: Any, device: str | torch.device = 'cpu', init_weights: bool = False,
                         seed: int = 0) -> nn.Module:
    """Build ``cfg.model`` for cost analysis: random weights, no checkpoint, eval mode.

    Steps: :func:`launch.register_scope` (``tools/launch.py``: mmseg / mmdet modules by
    ``cfg.default_scope``) and that scope made the default (``init_default_scope``); on a copy of
    the config, ``SyncBN`` -> ``BN`` (:func:`config_checks.sync_bn_to_bn`, ``tools/config_checks.py``) and the
    backbone's ``init_cfg`` / ``pretrained`` (and the model's ``pretrained`` and ``Pretrained``
    ``init_cfg``) removed; mmengine's
    root ``MODELS.build``, which resolves the type in the default scope; mmengine's
    ``revert_sync_batchnorm`` for any SyncBN the config did not name ``norm_cfg``.

    Args:
        cfg: an mmengine ``Config`` of ours (pretraining, mmseg or mmdet); not modified.
        device: where to put the model.
        init_weights: also call ``model.init_weights()`` (with the checkpoint gone this is the
            codebase's random initialisation; otherwise the layers keep PyTorch's constructor init).
        seed: ``torch.manual_seed`` before building.

    Returns:
        the model (an mmengine ``BaseModel``) in eval mode on ``device``.

    Raises:
        ValueError: the config has no ``model``.
        KeyError: a type the registries do not know (mmengine's message).
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS

    if cfg_get(cfg, 'model') is None:
        raise ValueError('the config has no `model` field: pass a training config (configs/pretrain, '
                         'configs/upernet, configs/cascade_mask_rcnn, configs/demo)')
    _register(cfg)
    cfg = copy.deepcopy(cfg)
    sync_bn_to_bn(cfg)
    model_cfg = cfg['model']
    model_cfg.pop('pretrained', None)
    if cfg_get(model_cfg.get('init_cfg'), 'type') == 'Pretrained':
        model_cfg.pop('init_cfg')
    backbone = model_cfg.get('backbone')
    if isinstance(backbone, Mapping):
        backbone.pop('init_cfg', None)
        backbone.pop('pretrained', None)
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    model = revert_sync_batchnorm(model)
    if init_weights:
        from _common import quiet_init_weights  # tools/analysis/_common.py
        quiet_init_weights(model)
    return model.to(device).eval()


# -------------------------------------------------------------------------------- dummy batch
def _num_classes(cfg: Any, kind: str) -> int:
    model = cfg_get(cfg, 'model') or {}
    if kind == 'cls':  # TLAImageClassifier: num_classes, or its head's
        n = cfg_get(model, 'num_classes') or cfg_get(cfg_get(model, 'head') or {}, 'num_classes')
    elif kind == 'seg':
        head = cfg_get(model, 'decode_head') or {}
        n = cfg_get(head[0] if isinstance(head, Sequence) else head, 'num_classes')
    else:
        head = cfg_get(cfg_get(model, 'roi_head') or {}, 'bbox_head') or cfg_get(model, 'bbox_head') or {}
        n = cfg_get(head[0] if isinstance(head, Sequence) else head, 'num_classes')
    return int(n) if isinstance(n, int) and n > 0 else 2


def make_dummy_batch(cfg: Any, shape: Sequence[int] | int, batch_size: int = 1, seed: int = 0,
                     num_instances: int = 3) -> dict:
    """A random batch of ``batch_size`` images of ``shape`` in the format of ``cfg``'s data preprocessor.

    ``{'inputs': [B tensors (3, H, W) uint8], 'data_samples': [B samples]}`` -- what mmengine's
    ``pseudo_collate`` makes of the packed pipeline outputs -- with, per kind (:func:`task_kind`):

    * ``'cls'``: :class:`tlalign_mm.structures.ClsDataSample` with a random ``gt_label`` (1,) int64 in
      ``[0, model.num_classes)`` and metainfo ``img_shape`` / ``ori_shape``;
    * ``'seg'``: mmseg ``SegDataSample`` with ``gt_sem_seg`` (``PixelData``, (1, H, W) int64 in
      ``[0, decode_head.num_classes)``) and metainfo ``img_shape``, ``ori_shape``, ``pad_shape``;
    * ``'det'``: mmdet ``DetDataSample`` with ``gt_instances``: ``num_instances`` random boxes
      (``HorizontalBoxes``, xyxy pixels, 1/5 to 1/2 of the image side), ``labels`` in
      ``[0, bbox_head.num_classes)``, ``masks`` (``BitmapMasks``: an ellipse in each box), and
      metainfo ``img_shape``, ``ori_shape``, ``pad_shape``, ``batch_input_shape``, ``scale_factor``
      ``(1.0, 1.0)``; an empty ``ignored_instances``.

    Args:
        cfg: the config (its ``default_scope`` picks the kind, its heads the number of classes).
        shape: (H, W) in pixels, or one int for a square.
        batch_size: B >= 1.
        seed: seed of the private generator (the same batch for the same arguments).
        num_instances: boxes per image (``'det'`` only), >= 1.

    Raises:
        ValueError: ``batch_size`` or ``num_instances`` below 1, a shape side below 1.
    """
    h, w = _pair(shape if isinstance(shape, int) else tuple(shape), 'shape')
    if h < 1 or w < 1:
        raise ValueError(f'shape must be positive (H, W), got {(h, w)}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    if num_instances < 1:
        raise ValueError(f'num_instances must be >= 1, got {num_instances}')
    kind = task_kind(cfg)
    ncls = _num_classes(cfg, kind)
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for _ in range(batch_size)]
    samples = []
    for _ in range(batch_size):
        if kind == 'cls':
            from tlalign_mm.structures import ClsDataSample
            s = ClsDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
            s.gt_label = int(torch.randint(0, ncls, (1,), generator=g))
        elif kind == 'seg':
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
            s.gt_sem_seg = PixelData(data=torch.randint(0, ncls, (1, h, w), generator=g, dtype=torch.long))
        else:
            s = _det_sample(h, w, ncls, num_instances, g)
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def _det_sample(h: int, w: int, ncls: int, n: int, g: torch.Generator):
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                    batch_input_shape=(h, w), scale_factor=(1.0, 1.0)))
    u = torch.rand(n, 4, generator=g)
    bw = (0.2 + 0.3 * u[:, 0]) * w
    bh = (0.2 + 0.3 * u[:, 1]) * h
    x1 = u[:, 2] * (w - bw)
    y1 = u[:, 3] * (h - bh)
    boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], 1).float()
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing='ij')
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    rx, ry = bw / 2, bh / 2
    masks = (((xx[None] - cx[:, None, None]) / rx[:, None, None]) ** 2
             + ((yy[None] - cy[:, None, None]) / ry[:, None, None]) ** 2) <= 1
    inst = InstanceData()
    inst.bboxes = HorizontalBoxes(boxes)
    inst.labels = torch.randint(0, ncls, (n,), generator=g, dtype=torch.long)
    inst.masks = BitmapMasks(masks.numpy().astype(np.uint8), h, w)
    s.gt_instances = inst
    ign = InstanceData()
    ign.bboxes = HorizontalBoxes(torch.zeros(0, 4))
    ign.labels = torch.zeros(0, dtype=torch.long)
    s.ignored_instances = ign
    return s


# ------------------------------------------------------------------------------------- FLOPs
def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """FLOPs of one traced ``aten::scaled_dot_product_attention`` (an mmengine / fvcore op handle).

    ``q`` (..., Nq, D_qk), ``k`` (..., Nk, D_qk), ``v`` (..., Nk, D_v), output (..., Nq, D_v):
    ``Q K^T`` costs ``Nq * Nk * D_qk`` multiply-adds and ``softmax(.) V`` costs ``Nq * Nk * D_v`` per
    batch-and-head element, so the count is ``B * heads * Nq * Nk * (D_qk + D_v)`` with
    ``B * heads = prod(output.shape[:-2])`` (broadcast / grouped-query heads included), one
    multiply-add counted as one FLOP -- what mmengine counts for the same attention written as
    two matmuls.  Scaling, mask addition, softmax and dropout are not counted (mmengine does not
    count them in the matmul form either).

    Args:
        inputs: the JIT values of the op's inputs (``query, key, value, attn_mask, ...``).
        outputs: the JIT values of its outputs.

    Returns:
        the FLOP count (int).

    Raises:
        ValueError: a traced input without a complete shape (the trace lost it).
    """
    from mmengine.analysis.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    out = get_shape(outputs[0])
    if q is None or k is None or v is None or out is None:
        raise ValueError('scaled_dot_product_attention: the trace recorded no complete shape for '
                         'query / key / value / output; cannot count its FLOPs')
    nq, d_qk = q[-2], q[-1]
    nk, d_v = k[-2], v[-1]
    return int(math.prod(out[:-2])) * nq * nk * (d_qk + d_v)


def flop_analyzer(model: nn.Module, inputs: Any):
    """mmengine's :class:`~mmengine.analysis.FlopAnalyzer` for ``model(*inputs)`` with :func:`sdpa_flop_jit`
    registered for :data:`SDPA_OPS` and mmengine's warnings (unsupported ops, uncalled modules,
    tracer) off -- read them from ``unsupported_ops()`` / ``uncalled_modules()`` instead.

    Args:
        model: the module to trace (its ``forward`` must take ``inputs`` positionally).
        inputs: a tensor or a tuple of tensors.

    Returns:
        the analyzer (lazy: the trace runs on the first query, e.g. ``.total()``).
    """
    from mmengine.analysis import FlopAnalyzer

    fa = FlopAnalyzer(model, inputs)
    fa.set_op_handle(**{op: sdpa_flop_jit for op in SDPA_OPS})
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    fa.tracer_warnings('none')
    return fa


@dataclass
class ModelCost:
    """Parameters and FLOPs of one model at one input size.

    Attributes:
        kind: ``'cls'``, ``'seg'`` or ``'det'`` (:func:`task_kind`).
        model_type, backbone_type: class names.
        input_shape: (B, 3, H, W) of the traced network input, after the data preprocessor
            (mmdet pads to ``pad_size_divisor``).
        flops: FLOPs of one ``'tensor'``-mode forward of the whole batch (one multiply-add = 1).
        params: parameters of the whole model (trainable or not).
        parts: per top-level child (``backbone``, ``neck``, ``decode_head``, ``auxiliary_head``,
            ``rpn_head``, ``roi_head``, ``head``...; the data preprocessor left out):
            ``{'params': int, 'flops': int or None}``, ``flops`` None when the child does not
            run in tensor mode (e.g. mmseg's ``auxiliary_head``, used in training only); plus
            ``'other'`` (``params`` 0) when ops outside any child were counted.
        sdpa_flops: the part of ``flops`` that :func:`sdpa_flop_jit` counted.
        unsupported_ops: traced ops without a FLOP handle (not counted) -> number of calls.
    """
    kind: str
    model_type: str
    backbone_type: str
    input_shape: tuple
    flops: int
    params: int
    parts: dict = field(default_factory=dict)
    sdpa_flops: int = 0
    unsupported_ops: dict = field(default_factory=dict)

    @property
    def backbone_params(self) -> int:
        """Parameters of ``model.backbone`` (0 when the model has none)."""
        return self.parts.get('backbone', {}).get('params', 0)

    @property
    def backbone_flops(self) -> int:
        """FLOPs of ``model.backbone`` (0 when the model has none)."""
        return self.parts.get('backbone', {}).get('flops') or 0

    def as_dict(self) -> dict:
        """JSON-ready copy (plus ``backbone_params`` / ``backbone_flops``)."""
        d = asdict(self)
        d['input_shape'] = list(self.input_shape)
        d.update(backbone_params=self.backbone_params, backbone_flops=self.backbone_flops)
        return d


def _scoped(fn, name: str):
    """``fn`` run inside the trace scope ``name`` (so that a child's ``forward`` called as a method, not
    through ``__call__`` and its scope hooks, is still attributed to the child)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        state = torch._C._get_tracing_state()
        if state is not None:
            state.push_scope(name)
        try:
            return fn(*args, **kwargs)
        finally:
            if state is not None:
                state.pop_scope()
    return wrapper


def measure_cost(model: nn.Module, data: dict, kind: str = '') -> ModelCost:
    """Count the parameters and the ``'tensor'``-mode FLOPs of ``model`` on one preprocessed batch.

    The model is traced as ``model(inputs, data_samples=..., mode='tensor')`` --
    ``model.forward`` replaced for the trace by a ``functools.partial`` holding the data samples,
    as mmdet's ``tools/analysis_tools/get_flops.py`` does (two-stage detectors need them in
    tensor mode), and restored afterwards.  Tensor mode is the network without post-processing:
    classifier logits; mmseg ``backbone -> neck -> decode_head`` (no auxiliary head, no resize
    to the image); mmdet backbone, neck, RPN head, proposals (RPN ``predict``: its NMS costs no
    counted FLOPs) and all cascade RoI-head stages on them, so the RoI-head count follows the
    number of proposals NMS keeps (at most ``test_cfg.rpn.max_per_img``).  The trace runs with
    autograd on, so that ``nn.MultiheadAttention`` (mmseg's ViT) takes its matmul path rather
    than the fused fast path that has no FLOP handle.

    Per-part FLOPs: mmengine attributes an op to the modules whose ``__call__`` is running; mmseg
    and mmdet call some heads' ``forward`` as a method (``decode_head.forward``,
    ``roi_head.forward``), so for the trace every top-level child's ``forward`` also opens the
    child's scope, and e.g. UPerHead's own feature-pyramid resizes count to ``decode_head``.

    Args:
        model: from :func:`build_analysis_model`.
        data: ``model.data_preprocessor(batch, training=False)`` output: ``inputs`` (B, 3, H, W)
            float tensor, ``data_samples`` list.
        kind: stored in the result (:func:`task_kind` of the config).

    Returns:
        :class:`ModelCost`.

    Raises:
        TypeError: ``data['inputs']`` is not a 4-D tensor (pass the preprocessed batch).
    """
    from mmengine.analysis import parameter_count

    inputs = data['inputs']
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        raise TypeError('measure_cost needs the data preprocessor\'s output: data["inputs"] a (B, 3, H, W) '
                        f'tensor, got {type(inputs).__name__}')
    children = [(n, c) for n, c in model.named_children() if n != 'data_preprocessor']
    fa = flop_analyzer(model, (inputs,))
    patched = [model] + [c for _, c in children]
    saved = [(m, vars(m).get('forward')) for m in patched]
    model.forward = functools.partial(model.forward, data_samples=data.get('data_samples'), mode='tensor')
    for name, child in children:
        child.forward = _scoped(child.forward, name)
    try:
        # inference cost: traced without autograd, so the backbones take their inference kernels
        # (on CPU our Swin writes its attention out only when the relative position bias needs a
        # gradient; the count is the same either way)
        with torch.no_grad():
            total = int(fa.total())
        by_module = fa.by_module()
        uncalled = fa.uncalled_modules()
        by_op = fa.by_operator()
        unsupported = fa.unsupported_ops()
    finally:
        for m, fwd in saved:
            if fwd is None:
                del m.forward
            else:
                m.forward = fwd
    pcount = parameter_count(model)
    parts = {}
    for name, _ in children:
        called = name not in uncalled or by_module.get(name, 0) > 0
        params = int(pcount.get(name, 0))
        if not called and not params:
            continue  # e.g. the classifier's loss module
        parts[name] = dict(params=params, flops=int(by_module.get(name, 0)) if called else None)
    rest = total - sum(p['flops'] or 0 for p in parts.values())
    if rest:
        parts['other'] = dict(params=0, flops=int(rest))
    sdpa = sum(int(by_op.get(op.split('::', 1)[1], 0)) for op in SDPA_OPS)
    return ModelCost(kind=kind, model_type=type(model).__name__,
                     backbone_type=type(model.backbone).__name__,
                     input_shape=tuple(inputs.shape), flops=total, params=int(pcount['']), parts=parts,
                     sdpa_flops=sdpa, unsupported_ops=dict(Counter(unsupported).most_common()))


def config_cost(cfg: Any, shape: Optional[Sequence[int]] = None, batch_size: int = 1,
                device: str | torch.device = 'cpu', seed: int = 0) -> ModelCost:
    """:func:`build_analysis_model` + :func:`make_dummy_batch` + preprocessing + :func:`measure_cost`.

    Args:
        cfg: the config (not modified).
        shape: (H, W) in pixels; None for :func:`default_input_shape`.
        batch_size: images per traced batch (FLOPs are for the whole batch).
        device: where to build and trace.
        seed: weights and batch seed.

    Returns:
        :class:`ModelCost` with ``kind`` set.
    """
    if shape is None:
        shape, _ = default_input_shape(cfg)
    cfg = copy.deepcopy(cfg)
    apply_input_shape(cfg, shape)
    model = build_analysis_model(cfg, device=device, seed=seed)
    batch = make_dummy_batch(cfg, shape, batch_size, seed=seed)
    data = model.data_preprocessor(batch, False)
    return measure_cost(model, data, task_kind(cfg))


# ------------------------------------------------------------------------------ stock backbone
def stock_backbone_config(backbone: Mapping, scope: Optional[str]) -> dict:
    """The stock OpenMMLab backbone config with the same architecture as one of ours.

    The mapping is the ``stock`` table each family of ``tlalign_mm/checkpoint/{vit,swin,pvt}.py`` keeps for its
    export build lines, so the comparison and the exports cannot drift: the config's arguments over the
    constructor's defaults, ``arch`` resolved, our own arguments (label options, weight loading) dropped.
    ``TLASwinTransformer`` -> mmseg / mmdet ``SwinTransformer``; ``TLAPyramidVisionTransformer`` -> mmdet
    ``PyramidVisionTransformer`` (v1) / ``PyramidVisionTransformerV2`` (v2); ``TLAVisionTransformer`` -> mmseg /
    mmpretrain ``VisionTransformer``.  No ``init_cfg`` (random init).

    Args:
        backbone: ``cfg.model.backbone`` of one of our configs (``type`` with or without a scope).
        scope: the config's ``default_scope``: ``'mmseg'``, ``'mmdet'`` or ``'mmpretrain'``.

    Returns:
        a plain dict, buildable by ``MODELS.build`` under ``scope``.

    Raises:
        ValueError: a backbone type other than ours; another scope (pretraining configs: the stock backbones
            have no classifier outputs); what the stock class cannot express (mmdet has no ViT, mmseg no PVT,
            Swin / PVT / ViT ``out_type`` other than ``'featmap'``, a distilled ViT or a ViT ``frozen_stages``
            for mmseg); keys the mapping does not know (names them).
    """
    import inspect

    from tlalign_mm.checkpoint.layouts import FAMILIES

    btype = _type_name(cfg_get(backbone, 'type', ''))
    if scope not in ('mmseg', 'mmdet', 'mmpretrain'):
        raise ValueError(f"stock backbones are mmseg's, mmdet's or mmpretrain's: the config's default_scope is "
                         f"{scope!r} (pretraining configs have no stock comparison; "
                         'tools/analysis/benchmark_label_path.py compares the pretraining backbones)')
    family = next((f for f in FAMILIES if f.MODEL.__name__ == btype), None)
    if family is None:
        raise ValueError(f'no stock counterpart for backbone type {btype!r}: the mapping knows '
                         f'{", ".join(f.MODEL.__name__ for f in FAMILIES)} (our backbones)')
    ours_only = ('type', 'attn_impl', 'label_dtype', 'init_cfg', 'pretrained')
    a = {k: p.default for k, p in inspect.signature(family.MODEL).parameters.items()} | dict(backbone)
    a = {k: v for k, v in a.items() if k not in ours_only}
    a |= family.MODEL.resolve_arch(a.pop('arch'))
    path, kw = family.stock(a, scope)
    if a:
        raise ValueError(f'model.backbone ({btype}) has keys the stock mapping does not know: {sorted(a)}')
    return dict(type=path.rsplit('.', 1)[1], **kw)


def with_stock_backbone(cfg: Any):
    """A deep copy of ``cfg`` whose ``model.backbone`` is :func:`stock_backbone_config` of ours.

    Raises:
        ValueError: as :func:`stock_backbone_config`; a config without ``model.backbone``.
    """
    backbone = cfg_get(cfg_get(cfg, 'model') or {}, 'backbone')
    if not isinstance(backbone, Mapping):
        raise ValueError('the config has no model.backbone to replace')
    stock = stock_backbone_config(backbone, cfg_get(cfg, 'default_scope'))
    out = copy.deepcopy(cfg)
    out['model']['backbone'] = stock
    return out
