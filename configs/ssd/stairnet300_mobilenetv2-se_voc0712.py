# StairNet MobileNetV2 + SE right before every classifier (Table 7, MobileNet rows).
_base_ = './stairnet300_mobilenetv2_voc0712.py'
model = dict(bbox_head=dict(attention=dict(type='SE')))
