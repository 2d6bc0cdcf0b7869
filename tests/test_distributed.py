"""Two CPU processes (gloo) through tools/dist_train.sh keep the attention equal on both ranks: the
plugin after a BatchNorm (which takes over the BN's backward) and AttnResNet's fused BN + CBAM
block; parameters are gathered from both ranks, not read from rank 0's checkpoint."""

import pytest
import torch

from tests.helpers import DEMO_CONFIG, dist_train_with_attention_dumps

FUSED_BACKBONE = (
    "dict(_delete_=True, type='AttnResNet', depth=50, base_channels=16, attention=dict(type='CBAM'), "
    'freeze_attention=True, frozen_stages=-1, norm_eval=True, zero_init_residual=False)'
)


def config_text(root: str, backbone: str) -> str:
    root = root.rstrip('/') + '/'
    ann = root + 'annotations/instances_val.json'
    return f"""
_base_ = {DEMO_CONFIG!r}
custom_imports = dict(imports=['cbam_det', 'dump_attention'], allow_failed_imports=False)
custom_hooks = [dict(type='DumpAttention')]
randomness = dict(seed=0, deterministic=True)
model = dict(backbone={backbone})
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=3, val_interval=1000)
param_scheduler = []
default_hooks = dict(checkpoint=dict(interval=1000), logger=dict(interval=1))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root={root!r}))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root={root!r}))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file={ann!r})
test_evaluator = val_evaluator
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    'variant, backbone',
    [
        ('plugin_after_bn', 'dict(zero_init_residual=False)'),  # mmdet ResNet + CBAM plugins after bn3
        ('fused_block_frozen_bn', FUSED_BACKBONE),  # BN + CBAM fused; every BatchNorm frozen (norm_eval)
    ],
)
def test_two_processes_keep_attention_identical(variant, backbone, tiny_demo_data, tmp_path):
    out, before, r0, r1 = dist_train_with_attention_dumps(tmp_path, config_text(tiny_demo_data, backbone), 29551)
    assert 'Iter(train) [3/3]' in out, out[-3000:]
    assert len(r0) == len(before) > 0
    params = [k for k in r0 if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
    moved = sum(not torch.equal(r0[k], before[k]) for k in params)
    assert moved >= len(params) // 2, f'only {moved} of {len(params)} attention parameters changed'
    for k in params:
        assert torch.equal(r0[k], r1[k]), k
    if variant == 'fused_block_frozen_bn':  # frozen statistics: the buffers are equal too
        for k in r0:
            assert torch.equal(r0[k], r1[k]), k
