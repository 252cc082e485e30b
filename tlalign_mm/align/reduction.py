"""Label rules of the pyramid (PVT) backbones: spatial-reduction keys and patch embeddings.

PVT (Wang et al., ICCV 2021; PVTv2, CVMJ 2022; github whai362/PVT) takes the keys and values of
its spatial-reduction attention from a strided convolution of the token map, and starts every
stage with a strided patch embedding.  Labels follow both with mass-conserving pools:

* a reduced key stands for the ``sr x sr`` tokens its convolution covers, so its label is the
  mean of theirs (:func:`reduce_token_labels`), and the block's labels move with
  ``mean_h(A_h) @ Y_reduced`` (A: queries x reduced keys) before the residual average;
* a patch embedding with kernel = stride (PVTv1) pools the labels of each patch like Swin's patch
  merging; an overlapping one (PVTv2: kernel 7 / 3, stride 4 / 2, zero padding) gives each new
  token the area-weighted mean of the labels under its kernel window, counting only real tokens
  (the zero padding carries no image);
* the first patch embedding applies the same rule to the pixels: PVTv2's 7x7 stride-4 window
  pools the pixel-level mixing mask into the first-stage token shares
  (``TLAPyramidVisionTransformer.token_share``), so one function owns the rule at every stage.

Every rule averages unit-mass rows, so every label row keeps unit mass.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ['reduce_token_labels', 'pool_token_labels']


def pool_token_labels(labels: Tensor, hw: tuple[int, int], kernel: int, stride: int, padding: int = 0,
                      where: str = 'a patch embedding') -> tuple[Tensor, tuple[int, int]]:
    """Mean-pool (B, H*W, K) token labels over ``kernel`` windows with ``stride`` and ``padding``.

    Windows that overhang the map average the real tokens only (``count_include_pad=False``).

    Args:
        labels: (B, H*W, K) float labels of a row-major (H, W) token map.
        hw: (H, W).
        kernel, stride, padding: of the convolution the labels follow.
        where: named in the error message (e.g. 'stage 2 patch embedding').

    Returns:
        (``(B, H' * W', K)`` float32 labels, ``(H', W')``) with ``H' = (H + 2p - k) // s + 1``.

    Raises:
        ValueError: ``kernel == stride`` without padding on a map the stride does not divide
            (the convolution would drop the last rows / columns, and their labels with them).
    """
    h, w = hw
    if padding == 0 and kernel == stride and (h % stride or w % stride):
        raise ValueError(f'{where}: a {h}x{w} token map is not divisible by its stride {stride}; token '
                         f'labels need every stage map to be a multiple of it (choose an input size that is)')
    b, n, k = labels.shape
    grid = labels.float().transpose(1, 2).reshape(b, k, h, w)
    pooled = F.avg_pool2d(grid, kernel, stride, padding, count_include_pad=False)
    return pooled.flatten(2).transpose(1, 2), (pooled.shape[-2], pooled.shape[-1])


def reduce_token_labels(labels: Tensor, hw: tuple[int, int], sr_ratio: int, stage: int) -> Tensor:
    """Labels of the keys of a spatial-reduction attention: the mean over each ``sr x sr`` cell.

    Args:
        labels: (B, H*W, K) token labels.
        hw: (H, W) token map.
        sr_ratio: the reduction ratio (kernel = stride of the ``sr`` convolution); 1 returns the
            labels unchanged.
        stage: 1-based stage index, for the error message.

    Returns:
        (B, (H / sr) * (W / sr), K) float32.

    Raises:
        ValueError: ``sr_ratio`` does not divide the stage map (names the stage and the sizes).
    """
    if sr_ratio == 1:
        return labels.float()
    h, w = hw
    if h % sr_ratio or w % sr_ratio:
        raise ValueError(f'stage {stage}: the {h}x{w} token map is not divisible by the spatial-reduction '
                         f'ratio sr_ratio={sr_ratio}; token labels need it to be (e.g. 224 px inputs)')
    return pool_token_labels(labels, hw, sr_ratio, sr_ratio)[0]
