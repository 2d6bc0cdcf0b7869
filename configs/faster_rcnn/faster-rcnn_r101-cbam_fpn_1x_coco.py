# Modern default: Faster R-CNN R-101-FPN 1x with CBAM in every bottleneck (CBAM paper Fig. 3
# placement), torchvision ImageNet weights, attention initialised at identity and kept trainable
# despite frozen_stages=1 / norm_eval=True.
_base_ = './faster-rcnn_r101_fpn_1x_coco.py'
model = dict(backbone=dict(attention=dict(type='CBAM', init_mode='identity')))
