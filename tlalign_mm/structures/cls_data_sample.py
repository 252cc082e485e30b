"""The annotation of one image: :class:`ClsDataSample`, shaped like mmpretrain's ``DataSample``."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from mmengine.structures import BaseDataElement

__all__ = ['ClsDataSample']


def _format_label(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        out = value.reshape(-1).long()
    elif isinstance(value, np.ndarray):
        out = torch.from_numpy(value).reshape(-1).long()
    elif isinstance(value, (int, np.integer)):
        out = torch.tensor([int(value)], dtype=torch.long)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        out = torch.tensor(list(value), dtype=torch.long)
    else:
        raise TypeError(f'cannot make a label tensor from {type(value)}')
    return out


class ClsDataSample(BaseDataElement):
    """One image's annotation, shaped like mmpretrain's ``DataSample`` (without depending on it).

    Fields: ``gt_label`` LongTensor of shape (1,) (setter accepts int / sequence / array / tensor);
    metainfo ``img_path``, ``ori_shape`` (h, w), ``img_shape`` (H, W), ``sample_idx``.  A batch's
    labels are ``torch.cat([s.gt_label for s in data_samples])`` -> (B,) int64.  Models may add any
    further field (``pred_score``, ``pred_label``, ...) as for any ``BaseDataElement``.
    """

    @property
    def gt_label(self) -> torch.Tensor:
        return self._gt_label

    @gt_label.setter
    def gt_label(self, value) -> None:
        self.set_field(_format_label(value), '_gt_label', dtype=torch.Tensor)

    @gt_label.deleter
    def gt_label(self) -> None:
        del self._gt_label

    def set_gt_label(self, value) -> ClsDataSample:
        self.gt_label = value
        return self
