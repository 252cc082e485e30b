"""Write a backbone-only checkpoint that downstream configs load with ``init_cfg``."""
from __future__ import annotations

import dataclasses
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ...checkpoint import atomic_save
from ...checkpoint.export import backbone_export
from ...registry import HOOKS

__all__ = ['BackboneExportHook']


@HOOKS.register_module()
class BackboneExportHook(Hook):
    """Export the backbone when training ends (and, optionally, with every saved checkpoint).

    The file is :func:`tlalign_mm.checkpoint.export.backbone_export` of the (unwrapped) model's
    backbone: our layout, no ``backbone.`` prefix, ready for
    ``backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=PATH))`` in the UperNet /
    Cascade Mask R-CNN configs (``tlalign_mm.checkpoint.load_backbone_checkpoint`` reads it).
    Its ``meta`` holds the backbone type, what the backbone's contract declares (``patch_size``,
    ``num_prefix_tokens``, ``feature_info``: one ``{'num_chs', 'reduction', 'module'}`` dict per
    returned stage) and the run's epoch and iteration.

    Args:
        filename: name of the final export inside the work dir.
        at_checkpoint: also write ``<checkpoint stem>_backbone.pth`` beside each checkpoint
            the CheckpointHook saves.
    """

    priority = 'VERY_LOW'   # after CheckpointHook

    def __init__(self, filename: str = 'backbone.pth', at_checkpoint: bool = False):
        self.filename = filename
        self.at_checkpoint = at_checkpoint
        self.last_export: str | None = None
        self._exported_for: str | None = None   # the checkpoint the last per-checkpoint export followed

    def _write(self, runner, path: str, done_iters: int | None = None) -> None:
        if not is_main_process():
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        bb = model.backbone   # a TLABackbone (the classifier checks): meta holds what its contract declares
        ckpt = backbone_export({k: v.clone() for k, v in bb.state_dict().items()}, backbone_type=type(bb).__name__,
                               patch_size=bb.patch_size, num_prefix_tokens=bb.num_prefix_tokens,
                               feature_info=[dataclasses.asdict(f) for f in bb.feature_info],
                               epoch=runner.epoch, iter=runner.iter if done_iters is None else done_iters,
                               experiment=runner.experiment_name)
        atomic_save(ckpt, path)   # a crash leaves the previous export or this one, never half of one
        self.last_export = path
        runner.logger.info(f'backbone exported to {path}')

    def _export_new_checkpoint(self, runner, done_iters: int) -> None:
        """After the CheckpointHook (this hook runs later): export beside a checkpoint it just wrote.

        mmengine 0.10.7 has no ``after_save_checkpoint`` stage, so the new checkpoint is found
        through the ``last_checkpoint`` file that ``CheckpointHook`` rewrites on every save.
        """
        if not self.at_checkpoint:
            return
        last = osp.join(runner.work_dir, 'last_checkpoint')
        if not osp.exists(last):
            return
        with open(last) as f:
            ckpt = f.read().strip()
        if not ckpt or ckpt == self._exported_for:
            return
        self._exported_for = ckpt
        stem = osp.splitext(osp.basename(ckpt))[0]
        self._write(runner, osp.join(osp.dirname(ckpt) or runner.work_dir, f'{stem}_backbone.pth'), done_iters)

    def before_train(self, runner) -> None:
        last = osp.join(runner.work_dir, 'last_checkpoint')   # a resumed run's earlier checkpoint
        if osp.exists(last):
            with open(last) as f:
                self._exported_for = f.read().strip()

    def after_train_epoch(self, runner) -> None:
        self._export_new_checkpoint(runner, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._export_new_checkpoint(runner, runner.iter + 1)   # the loop counts this iteration after the hooks

    def after_run(self, runner) -> None:
        if runner.train_loop is None:
            return
        self._write(runner, osp.join(runner.work_dir, self.filename))
