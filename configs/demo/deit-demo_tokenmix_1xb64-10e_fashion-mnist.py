# The demo's TokenMix: TokenMix's block masks (half of the 64 tokens + 4) and its target, with
# the demo TL-Align model as the teacher. Train the teacher first (tools/run_demo.sh does not):
#   python tools/train.py configs/demo/deit-demo_tla_1xb64-10e_fashion-mnist.py --work-dir work_dirs/demo_teacher
_base_ = ['./deit-demo_tla_1xb64-10e_fashion-mnist.py']
teacher_checkpoint = 'work_dirs/demo_teacher/epoch_10.pth'
model = dict(
    label_rule=dict(_delete_=True, type='TokenMix',
                    teacher=dict(config='configs/demo/deit-demo_tla_1xb64-10e_fashion-mnist.py',
                                 checkpoint=teacher_checkpoint)),
    data_preprocessor=dict(mixer=dict(cutmix_alpha=0.0, tokenmix_alpha=1.0, tokenmix_mask='block',
                                      tokenmix_lam=0.5, tokenmix_min_tokens=4)))
