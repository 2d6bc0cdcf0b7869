"""Two CPU processes (gloo) through tools/dist_train.sh keep the attention equal on both ranks: the
plugin after a BatchNorm (which takes over the BN's backward) and AttnResNet's fused BN + CBAM
block; parameters are gathered from both ranks, not read from rank 0's checkpoint."""

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import DEMO_CONFIG, REPO

DUMP_HOOK = '''
import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from cbam_det.models.layers.base import AttentionModule


@HOOKS.register_module()
class DumpAttention(Hook):
    """Each rank saves the parameters and buffers of every attention module, before and after."""

    def _dump(self, runner, tag):
        model = getattr(runner.model, 'module', runner.model)
        state = {}
        for name, m in model.named_modules():
            if isinstance(m, AttentionModule):
                state.update({f'{name}.{k}': v.detach().clone() for k, v in m.state_dict().items()})
        torch.save(state, f'{runner.work_dir}/attention_{tag}_rank{dist.get_rank()}.pth')

    def before_run(self, runner):
        self._dump(runner, 'before')

    def after_run(self, runner):
        self._dump(runner, 'after')
'''

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
    (tmp_path / 'dump_attention.py').write_text(DUMP_HOOK)
    config = tmp_path / f'{variant}.py'
    config.write_text(config_text(tiny_demo_data, backbone))
    work = tmp_path / 'work'
    env = dict(os.environ, PYTHON=sys.executable, PORT='29551', PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir', str(work)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert 'Distributed training: True' in out and 'Iter(train) [3/3]' in out, out[-3000:]
    before = torch.load(work / 'attention_before_rank0.pth', weights_only=True)
    r0, r1 = (torch.load(work / f'attention_after_rank{r}.pth', weights_only=True) for r in (0, 1))
    assert len(r0) == len(before) > 0
    params = [k for k in r0 if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
    moved = sum(not torch.equal(r0[k], before[k]) for k in params)
    assert moved >= len(params) // 2, f'only {moved} of {len(params)} attention parameters changed'
    for k in params:
        assert torch.equal(r0[k], r1[k]), k
    if variant == 'fused_block_frozen_bn':  # frozen statistics: the buffers are equal too
        for k in r0:
            assert torch.equal(r0[k], r1[k]), k
