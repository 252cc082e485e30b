"""TL-Align, the algorithm: framework-free torch functions (``docs/advanced_guides/method.md``)."""
from .propagate import (
                        ATTN_IMPLS,
                        LABEL_DTYPES,
                        attention_label_step,
                        attention_with_labels,
                        check_attn_options,
                        check_token_labels,
                        fused_attention_with_labels,
                        materialised_attention_with_labels,
                        residual_label_average,
                        resolve_attn_impl,
                        split_attention_with_labels,
)
from .readout import LABEL_CHANNELS, READOUTS, align_stats, aligned_target, read_labels
from .reduction import pool_token_labels, reduce_token_labels
from .token_labels import (
                        expand_source_labels,
                        initial_class_labels,
                        initial_source_labels,
                        mixed_target,
                        partner_index,
                        smooth_one_hot,
                        token_share_from_mask,
)
from .windows import (
                        merge_patch_labels,
                        pad_to_multiple,
                        patch_merge_gather,
                        relative_position_index,
                        shifted_window_mask,
                        window_partition,
                        window_reverse,
)

__all__ = [
    'READOUTS', 'LABEL_CHANNELS', 'read_labels', 'aligned_target', 'align_stats',
    'pool_token_labels', 'reduce_token_labels',
    'ATTN_IMPLS', 'LABEL_DTYPES', 'check_attn_options', 'resolve_attn_impl', 'attention_with_labels',
    'split_attention_with_labels', 'attention_label_step', 'check_token_labels',
    'materialised_attention_with_labels',
    'fused_attention_with_labels', 'residual_label_average', 'expand_source_labels',
    'initial_class_labels', 'initial_source_labels', 'mixed_target', 'partner_index',
    'smooth_one_hot', 'token_share_from_mask', 'merge_patch_labels', 'pad_to_multiple',
    'patch_merge_gather', 'relative_position_index', 'shifted_window_mask', 'window_partition',
    'window_reverse'
]
