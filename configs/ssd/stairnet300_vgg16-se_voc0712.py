# StairNet + SE right before every classifier (CBAM paper Sec. 4.5, Table 7): one module per
# level, refining the fused (up-sampled global + local) feature that both predictors read.
_base_ = './stairnet300_vgg16_voc0712.py'
model = dict(bbox_head=dict(attention=dict(type='SE')))
