# CBAM paper Table 6 as the paper did it: the backbone starts from the authors' ImageNet
# ResNet-50 + CBAM (top-1 77.62). Convert their file first:
#   python tools/model_converters/official_to_mmdet.py RESNET50_CBAM.pth.tar checkpoints/resnet50_cbam_official.pth
_base_ = './faster-rcnn_r50_c4_1x_coco.py'
pretrained = 'checkpoints/resnet50_cbam_official.pth'
attention = dict(type='CBAM', spatial_pool='max_avg')  # the official [max; mean] order
model = dict(
    backbone=dict(
        attention=attention,
        attention_stages=(True, True, True),
        freeze_attention=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained),
    ),
    roi_head=dict(
        shared_head=dict(
            attention=attention, freeze_attention=True, init_cfg=dict(type='Pretrained', checkpoint=pretrained)
        )
    ),
)
