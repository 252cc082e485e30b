"""Top-k accuracy for the pretraining stage (mmengine ``BaseMetric``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.evaluator import BaseMetric

from ..registry import METRICS

__all__ = ['Accuracy']


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k classification accuracy in percent, as mmpretrain's ``Accuracy`` reports it.

    Reads ``pred_score`` (K,) and ``gt_label`` (1,) from each predicted data sample.

    Args:
        topk: the k values; each reported as ``accuracy/top{k}`` in [0, 100].

    Raises:
        ValueError: a k larger than the number of classes.
    """

    default_prefix = 'accuracy'

    def __init__(self, topk: int | Sequence[int] = (1,), collect_device: str = 'cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = (topk,) if isinstance(topk, int) else tuple(topk)

    def process(self, data_batch, data_samples: Sequence) -> None:
        for ds in data_samples:
            if not isinstance(ds, dict):
                ds = ds.to_dict()
            self.results.append(dict(score=ds['pred_score'].detach().cpu().float(),
                                     label=int(ds['gt_label'].reshape(-1)[0])))

    def compute_metrics(self, results: list) -> dict:
        scores = torch.stack([r['score'] for r in results])
        labels = torch.tensor([r['label'] for r in results])
        out = {}
        for k in self.topk:
            if k > scores.shape[1]:
                raise ValueError(f'topk={k} exceeds the number of classes {scores.shape[1]}')
            hit = (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
            out[f'top{k}'] = float(hit.float().mean() * 100)
        return out
