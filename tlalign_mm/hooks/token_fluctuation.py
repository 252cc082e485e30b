"""Log how far the plain mixed target is from the aligned one while training (paper Fig. 3)."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..registry import HOOKS

__all__ = ['TokenFluctuationHook']


@HOOKS.register_module()
class TokenFluctuationHook(Hook):
    """Every ``interval`` iterations, log the token-fluctuation figures of the training batch.

    Logged scalars (``train/`` prefix in the logs; values of that iteration's mixed batch):

    * ``align/rmse``: mean over samples of ``||y_aligned - y_area||_2`` (class space, with
      label smoothing), the distance between the TL-Align target and the plain CutMix target;
    * ``align/lam``: mean ``lam`` (area share of image A);
    * ``align/lam_aligned`` and ``align/lam_gap``: mean aligned share of A and mean
      ``|lam_aligned - lam|`` (K = 2 source embedding only) -- the paper's Fig. 3 quantity.

    With the CutMix baseline (``tl_align=False``) the classifier carries labels only on the
    monitored iterations (its loss still uses the area target), so the baseline's fluctuation is
    visible at a cost of one label pass every ``interval`` steps.

    Args:
        interval: iterations between measurements (>= 1).
    """

    priority = 'NORMAL'

    def __init__(self, interval: int = 50):
        if interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval}')
        self.interval = interval

    @staticmethod
    def _model(runner):
        m = runner.model
        return m.module if is_model_wrapper(m) else m

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        model = self._model(runner)
        if hasattr(model, 'track_alignment'):
            model.last_alignment = None
            model.track_alignment = self.every_n_train_iters(runner, self.interval)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        model = self._model(runner)
        stats = getattr(model, 'last_alignment', None)
        if not self.every_n_train_iters(runner, self.interval) or not stats:
            return
        for k, v in stats.items():
            if v is not None:
                runner.message_hub.update_scalar(f'train/align/{k}', v)
        model.track_alignment = False
