# Swin-T classifier trained with TL-Align on token-aligned CutMix (the TL-Align recipe,
# tla_classifier.py). Labels ride on the patch-4 tokens; boxes align to the 32-px grid
# of the last stage, so every final token is wholly one image. Target: mean of the final token
# labels.
_base_ = ['./tla_classifier.py']
model = dict(
    backbone=dict(type='TLASwinTransformer', arch='tiny', img_size=224, window_size=7,
                  out_indices=(3,), out_type='avg_featmap', drop_path_rate=0.2,
                  # labels ride in each window attention call at the features' precision
                  # (one fused call per block under AMP), renormalised and kept in float32
                  # between blocks; 'float32' adds a float32 label pass per block under AMP
                  label_dtype='auto'),
    data_preprocessor=dict(mixer=dict(patch_size=4, token_grid_size=32)),
)
