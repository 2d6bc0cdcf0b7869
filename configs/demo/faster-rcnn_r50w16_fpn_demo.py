# CPU demo baseline: the same Faster R-CNN + FPN, slim ResNet-50, data and schedule as
# faster-rcnn_r50w16-cbam_fpn_demo.py, without CBAM (the CBAM paper's "baseline" of Fig. 5).
_base_ = './faster-rcnn_r50w16-cbam_fpn_demo.py'

model = dict(backbone=dict(plugins=None))
