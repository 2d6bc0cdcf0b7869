# (c) CBAM added to the trained plain demo detector with init_mode='identity': gates normalised to 1
# at zero logits and starting there, so the detector is unchanged at step 0; fine-tuned as (a).
_base_ = './faster-rcnn_r50w16_fpn_demo-ft.py'

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
