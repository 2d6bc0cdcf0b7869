# CBAM added to a *trained* Faster R-CNN R-50-FPN (mmdet's model zoo, 37.4 box AP): mmdet's own
# ResNet with a CBAM plugin in every bottleneck (the paper's placement, after the last BN), with
# init_mode='identity' so that the loaded detector's function is unchanged at step 0, then trained
# with the stock 1x schedule. Any trained R-50 Faster R-CNN checkpoint works: set load_from.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        plugins=[
            dict(
                cfg=dict(type='CBAM', inplace=True, init_mode='identity'),
                stages=(True, True, True, True),
                position='after_conv3',
            )
        ]
    )
)
load_from = (
    'https://download.openmmlab.com/mmdetection/v2.0/faster_rcnn/faster_rcnn_r50_fpn_1x_coco/'
    'faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth'
)
