# Modern default: Faster R-CNN R-50-FPN 1x with SE in every bottleneck (CBAM paper Fig. 3
# placement), torchvision ImageNet weights, attention initialised at identity and kept trainable
# despite frozen_stages=1 / norm_eval=True.
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'
model = dict(backbone=dict(attention=dict(type='SE', init_mode='identity')))
