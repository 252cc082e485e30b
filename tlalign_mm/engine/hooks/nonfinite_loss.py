"""Stop training on a non-finite loss, saying where and what to resume from."""
from __future__ import annotations

import math
import os.path as osp

import torch
from mmengine.hooks import Hook

from ...registry import HOOKS

__all__ = ['NonFiniteLossHook']


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise as soon as a training step's loss is NaN or infinite.

    The error names the iteration (and epoch), every loss term the model returned with its value,
    and the last checkpoint saved in the work dir (``last_checkpoint``), so the run can be resumed
    with ``--resume`` after lowering the learning rate or enabling gradient clipping.  It reads the
    loss mmengine's ``RuntimeInfoHook`` has already logged (``train/loss`` in the message hub, a host
    number), so the check adds no wait for the device.

    mmdet's ``CheckInvalidLossHook`` does the check, but checks every ``interval`` iterations, says
    neither the iteration nor what to resume from, and would make mmdet a dependency of pretraining.

    Raises:
        FloatingPointError: from ``after_train_iter`` on the first non-finite ``loss``.
    """

    priority = 'HIGH'   # after RuntimeInfoHook (VERY_HIGH) has logged the step, before logger and checkpoint

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not outputs or 'loss' not in outputs:
            return
        hub = runner.message_hub
        value = hub.get_scalar('train/loss').current() if 'train/loss' in hub.log_scalars else float(outputs['loss'])
        if math.isfinite(value):
            return
        terms = ', '.join(f'{k}={float(v.detach()) if torch.is_tensor(v) else v}' for k, v in outputs.items())
        last = osp.join(runner.work_dir, 'last_checkpoint')
        ckpt = open(last).read().strip() if osp.exists(last) else 'none saved yet'
        raise FloatingPointError(
            f'non-finite loss at iteration {runner.iter + 1} (epoch {runner.epoch + 1}): {terms}. '
            f'Last checkpoint: {ckpt}. Lower the learning rate or set optim_wrapper.clip_grad, then '
            f'resume with --resume.')
