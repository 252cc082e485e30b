# DeiT-S classifier trained with TL-Align on token-aligned CutMix (the reference recipe,
# tla_classifier.py): class-token target.
_base_ = ['./tla_classifier.py']
model = dict(
    backbone=dict(type='TLAVisionTransformer', arch='deit-small', img_size=224, patch_size=16,
                  out_type='cls_token', drop_path_rate=0.1,
                  # labels ride in each block's own attention call at the features' precision
                  # (one fused call per block under AMP), renormalised and kept in float32
                  # between blocks; 'float32' adds a float32 label pass per block under AMP
                  label_dtype='auto'),
    data_preprocessor=dict(mixer=dict(patch_size=16)),
)
