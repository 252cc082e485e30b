"""The readout: where the carried labels become the training target, and what they say about it.

The only copies of these three steps (``docs/advanced_guides/method.md``, "Output target"):

* :func:`read_labels`: the label row the classifier's pooled feature corresponds to -- the class
  token's row (``'cls'``: DeiT, PVT v1) or the mean over the patch tokens (``'mean'``: Swin,
  PVT v2, a token-mean DeiT);
* :func:`aligned_target`: that row as a class-space target, expanding the 2-channel source
  embedding when the labels carry sources rather than classes;
* :func:`align_stats`: the token-fluctuation statistics the classifier logs (``align/*``).

Pure torch; nothing here waits for the device.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .token_labels import expand_source_labels

__all__ = ['READOUTS', 'LABEL_CHANNELS', 'read_labels', 'aligned_target', 'align_stats']

#: Values of a readout: 'auto' (resolved by the model: the class token when the pooled feature
#: is the class token, else the token mean), 'cls', 'mean'.
READOUTS = ('auto', 'cls', 'mean')
#: What the carried labels' channels are: 'source' (K = 2, the share of each image) or
#: 'classes' (K = num_classes, the reference code's labels).
LABEL_CHANNELS = ('source', 'classes')


def read_labels(labels: Tensor, readout: str, num_prefix_tokens: int) -> Tensor:
    """(B, N, K) labels -> (B, K): the class token's row or the patch-token mean.

    Args:
        labels: (B, num_prefix_tokens + N_patch, K) labels the backbone carried, prefix rows first.
        readout: 'cls' (row 0) or 'mean' (mean over the rows after the prefix).
        num_prefix_tokens: prefix rows (class / distillation tokens) the mean skips.

    Raises:
        ValueError: an unknown readout, or 'cls' without a prefix row.
    """
    if readout == 'cls':
        if not num_prefix_tokens:
            raise ValueError("readout 'cls' needs a class-token row (num_prefix_tokens >= 1)")
        return labels[:, 0]
    if readout != 'mean':
        raise ValueError(f"readout must be 'cls' or 'mean' here, got {readout!r}")
    return labels[:, num_prefix_tokens:].mean(dim=1)


def aligned_target(labels: Tensor, y_a: Tensor, y_b: Tensor, readout: str, num_prefix_tokens: int,
                   label_channels: str = 'source') -> tuple[Tensor, Tensor]:
    """TL-Align's target: the read-out row in class space.

    Args:
        labels: carried labels as in :func:`read_labels`; K = 2 for ``label_channels='source'``.
        y_a, y_b: (B, K_cls) smoothed one-hot targets of each image and of its partner.
        readout, num_prefix_tokens: as :func:`read_labels`.
        label_channels: 'source' (expand ``r[0] y_a + r[1] y_b``) or 'classes' (already class
            space).

    Returns:
        (the read-out row (B, K), the (B, K_cls) float32 target).

    Raises:
        ValueError: an unknown ``label_channels``; see :func:`read_labels`.
    """
    if label_channels not in LABEL_CHANNELS:
        raise ValueError(f'label_channels must be one of {LABEL_CHANNELS}, got {label_channels!r}')
    row = read_labels(labels, readout, num_prefix_tokens)
    return row, (expand_source_labels(row, y_a, y_b) if label_channels == 'source' else row.float())


def align_stats(row: Tensor, lam: Tensor, target: Tensor, area: Tensor,
                lam_aligned: Optional[Tensor] = None) -> dict[str, Tensor]:
    """The ``align/*`` statistics of a mixed batch, each a detached 0-d tensor.

    Args:
        row: (B, K) read-out labels; with K = 2 (sources) its channel 0 is the aligned share of A.
        lam: (B,) area share of image A.
        target: (B, K_cls) the target trained on.
        area: (B, K_cls) the area target ``lam y_A + (1 - lam) y_B``.
        lam_aligned: (B,) the share of A as the rule reads it, when the row does not hold it
            (TransMix, TokenMix); None takes ``row[:, 0]`` for 2-channel rows and leaves
            ``lam_aligned`` / ``lam_gap`` out for class-space rows.

    Returns:
        ``align/lam`` (mean area share of A), ``align/lam_aligned`` (mean aligned share),
        ``align/lam_gap`` (mean ``|lam_aligned - lam|``, the paper's Fig. 3 quantity) and
        ``align/target_l2`` (mean ``||target - area||_2``).
    """
    stats = {'align/lam': lam.mean().detach()}
    if lam_aligned is None and row is not None and row.shape[-1] == 2:
        lam_aligned = row[:, 0]
    if lam_aligned is not None:
        lam_aligned = lam_aligned.detach()
        stats['align/lam_aligned'] = lam_aligned.mean()
        stats['align/lam_gap'] = (lam_aligned - lam).abs().mean()
    stats['align/target_l2'] = (target - area).detach().square().sum(-1).sqrt().mean()
    return stats
