# BAM paper, COCO: ResNet-101 + BAM, Faster R-CNN C4. BAM sits after stages 1, 2 and 3;
# in C4 bam3 refines the stage-3 feature used by the RPN and the RoI head (stage 4 has none).
_base_ = './faster-rcnn_r101_c4_1x_coco.py'
model = dict(backbone=dict(bam=dict(type='BAM', init_mode='identity'), bam_stages=(True, True, True)))
