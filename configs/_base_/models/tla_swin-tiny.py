# Swin-T classifier trained with TL-Align on token-aligned CutMix. Labels ride on the
# patch-4 tokens; boxes align to the 32-px grid of the last stage, so every final token is
# wholly one image. Target: mean of the final token labels.
_base_ = ['./tla_deit-small.py']
model = dict(
    backbone=dict(_delete_=True, type='TLASwinTransformer', arch='tiny', img_size=224, window_size=7,
                  out_indices=(3,), out_type='avg_featmap', drop_path_rate=0.2,
                  label_dtype='auto'),  # as the DeiT base: one fused attention call per window under AMP
    data_preprocessor=dict(mixer=dict(patch_size=4, token_grid_size=32)),
)
