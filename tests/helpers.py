"""Paths and small helpers shared by the test modules (fixtures live in conftest.py)."""

import importlib
import os
import os.path as osp
import subprocess
import sys

__all__ = [
    'REPO',
    'ANALYSIS',
    'DEMO_CONFIG',
    'analysis_tool',
    'demo_data_options',
    'dist_train',
    'dist_train_with_attention_dumps',
]

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r50w16-cbam_fpn_demo.py')
ANALYSIS = osp.join(REPO, 'tools', 'analysis')


def analysis_tool(name: str):
    """A module of tools/analysis (``census``, ``kernel_compile``, ``toolkit``, ...), imported
    as the commands there import each other (their folder on ``sys.path``)."""
    if ANALYSIS not in sys.path:
        sys.path.insert(0, ANALYSIS)
    return importlib.import_module(name)


def demo_data_options(root: str) -> list:
    """--cfg-options that point the demo config at another copy of the demo data."""
    root = root.rstrip('/') + '/'
    ann = root + 'annotations/instances_val.json'
    return [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        f'val_evaluator.ann_file={ann}',
        f'test_evaluator.ann_file={ann}',
    ]


def dist_train(config: str, work: str, port: int, *args: str, pythonpath: str = '') -> str:
    """tools/dist_train.sh CONFIG 2 (two CPU processes, gloo); returns the output, asserting success."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(port))
    if pythonpath:
        env['PYTHONPATH'] = pythonpath
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', config, '2', '--work-dir', work, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert 'Distributed training: True' in out, out[-3000:]
    return out


ATTENTION_DUMP_HOOK = '''
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


def dist_train_with_attention_dumps(tmp_path, config_text: str, port: int) -> tuple:
    """Two-process training of ``config_text`` (which must import 'dump_attention' and use the
    ``DumpAttention`` hook); returns (output, state before, rank 0 after, rank 1 after)."""
    import torch

    (tmp_path / 'dump_attention.py').write_text(ATTENTION_DUMP_HOOK)
    config = tmp_path / 'config.py'
    config.write_text(config_text)
    work = tmp_path / 'work'
    out = dist_train(str(config), str(work), port, pythonpath=str(tmp_path))
    before = torch.load(work / 'attention_before_rank0.pth', weights_only=True)
    after = [torch.load(work / f'attention_after_rank{r}.pth', weights_only=True) for r in (0, 1)]
    return out, before, after[0], after[1]
