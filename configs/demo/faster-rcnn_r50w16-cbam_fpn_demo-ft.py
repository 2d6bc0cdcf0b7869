# (b) CBAM added to the trained plain demo detector with the paper's initialisation (spatial gate
# at σ(0) = 0.5, channel gate ≈ 0.5: each block's residual branch starts scaled by about 0.25),
# loaded from the plain checkpoint and fine-tuned as (a). docs/modules.md has the table.
_base_ = './faster-rcnn_r50w16_fpn_demo-ft.py'

model = dict(
    backbone=dict(
        plugins=[dict(cfg=dict(type='CBAM', inplace=True), stages=(True, True, True, True), position='after_conv3')]
    )
)
