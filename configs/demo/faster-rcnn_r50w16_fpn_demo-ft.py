# Fine-tuning a trained plain demo detector (docs/modules.md, "Adding attention to a trained
# detector"): (a) the plain detector trained on. Train the plain demo first:
#   python tools/train.py configs/demo/faster-rcnn_r50w16_fpn_demo.py --work-dir work_dirs/demo_baseline
# then: python tools/train.py configs/demo/faster-rcnn_r50w16_fpn_demo-ft.py --work-dir work_dirs/demo_ft_plain
_base_ = './faster-rcnn_r50w16_fpn_demo.py'

load_from = 'work_dirs/demo_baseline/iter_800.pth'
max_iters = 400
train_cfg = dict(max_iters=max_iters, val_interval=100)  # evaluated after 100, 200, 300 and 400 iterations
optim_wrapper = dict(optimizer=dict(lr=0.004))  # a tenth of the demo's peak rate
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20)]
default_hooks = dict(checkpoint=dict(interval=100, max_keep_ckpts=4))
