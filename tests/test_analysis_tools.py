"""tools/analysis: the measuring toolkit (toolkit.py) and the thin commands over it
(benchmark.py, gpu_bench.py, census.py), which live outside the shipped package."""

import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

from cbam_det import CBAM

from .helpers import ANALYSIS, REPO, analysis_tool

toolkit = analysis_tool('toolkit')


def test_variants_alternate_inside_every_repeat():
    calls = []
    fns = {v: {'train': (lambda v=v: calls.append(v))} for v in ('a', 'b', 'c')}
    times = toolkit.time_alternating(fns, 'cpu', repeats=3, warmup=2, kinds=('train',))
    assert calls == ['a', 'a', 'b', 'b', 'c', 'c'] + ['a', 'b', 'c', 'c', 'b', 'a', 'a', 'b', 'c']
    assert {v: len(t['train']) for v, t in times.items()} == {'a': 3, 'b': 3, 'c': 3}
    assert all(s >= 0 for t in times.values() for s in t['train'])


def test_device_constants_and_the_floor():
    from cbam_det.kernels import launch

    assert toolkit.device_sms('cpu') == launch.DEFAULT_SMS == 132
    assert toolkit.copy_bandwidth('cpu') == toolkit.DEFAULT_BANDWIDTH_TBS * 1e12
    assert toolkit.copy_bandwidth('cpu', default_tbs=2.0) == 2e12
    assert toolkit.floor_ms(10, 1e9, 1e12) == pytest.approx(10.0)


def test_cpu_peak_memory_sees_a_step_that_allocates():
    nbytes = 64 * 2**20

    def step():
        torch.ones(nbytes // 4)  # written, so its pages are resident

    assert toolkit.peak_step_bytes(step, 'cpu') >= 0.9 * nbytes


def test_step_functions_train_and_infer():
    model = toolkit.ResNet50(lambda c: CBAM(c), width=8)
    x = torch.randn(2, 3, 32, 32)
    fns = toolkit.step_fns(model, x)
    fns['train']()
    assert model.training and all(p.grad is not None for p in model.parameters())
    fns['inference']()
    assert not model.training


def test_mmcv_free_resnet50_has_resnet50_stages():
    model = toolkit.ResNet50(lambda c: CBAM(c), width=8)
    outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 16, 24), (1, 64, 8, 12), (1, 128, 4, 6), (1, 256, 2, 3)]
    assert sum(isinstance(m, CBAM) for m in model.modules()) == 16


def test_the_package_imports_no_tool():
    """Measurement lives in tools/analysis; nothing under cbam_det/ imports it."""
    found = []
    for root, _, files in os.walk(osp.join(REPO, 'cbam_det')):
        for name in files:
            if name.endswith('.py'):
                text = open(osp.join(root, name)).read()
                if re.search(r'^\s*(from|import)\s+(tools|census|toolkit|kernel_compile|benchmark)\b', text, re.M):
                    found.append(name)
    assert not found


def _run(*args, timeout=600):
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_benchmark_command_prints_ratios_to_the_plain_network(tmp_path):
    out = tmp_path / 'bench.json'
    text = _run(
        osp.join(ANALYSIS, 'benchmark.py'),
        *('--backbone', 'r50', '--shape', '2', '3', '64', '64', '--repeats', '1', '--no-memory', '--reference'),
        *('--device', 'cpu', '--json', str(out)),
    )
    res = json.loads(out.read_text())
    assert set(res['variants']) == {'plain', 'attn', 'reference'}
    assert res['variants']['plain']['train']['median'] == 1.0
    assert res['variants']['attn']['train']['median'] > 0
    assert 'attn' in text and 'reference' in text


def test_gpu_bench_dry_run_gives_ratios_and_floors(tmp_path):
    """Floors from a counted-passes file (census.py --counted-passes, as the GPU machine reads
    them), the training step alone with --modes train."""
    passes = {
        k: {'train': {'total': t}, 'inference': {'total': i}}
        for k, t, i in (('cbam_plugin', 10.0, 4.0), ('se_plugin', 7.0, 3.0))
    }
    (tmp_path / 'passes.json').write_text(json.dumps(dict(module=passes, kernels={})))
    _run(
        osp.join(ANALYSIS, 'gpu_bench.py'),
        *(
            '--device',
            'cpu',
            '--shape',
            '2',
            '3',
            '32',
            '32',
            '--base-width',
            '8',
            '--repeats',
            '1',
            '--modes',
            'train',
        ),
        *('--warmup', '0', '--dtypes', 'float32', '--variants', 'cbam_plugin', 'se_plugin', '--out-dir', str(tmp_path)),
        *('--passes', str(tmp_path / 'passes.json')),
    )
    res = json.loads((tmp_path / 'gpu_bench.json').read_text())
    rows = res['results']['float32']
    assert set(rows) == {'plain', 'cbam_plugin', 'se_plugin'}
    assert res['bandwidth'] == toolkit.DEFAULT_BANDWIDTH_TBS * 1e12 and not res['bandwidth_measured']
    assert res['passes'] == passes
    # the floor is the counted passes over the attention inputs' bytes (16 blocks) at the bandwidth
    moved = (
        2
        * 4
        * sum(
            c * h * w for c, h, w, n in ((32, 8, 8, 3), (64, 4, 4, 4), (128, 2, 2, 6), (256, 1, 1, 3)) for _ in range(n)
        )
    )
    for name, train_passes in (('cbam_plugin', 10.0), ('se_plugin', 7.0)):
        assert rows[name]['train_floor_ms'] == pytest.approx(toolkit.floor_ms(train_passes, moved, res['bandwidth']))
        assert rows[name]['train'] > 0 and rows[name]['inference'] is None and 'inference_floor_ms' not in rows[name]
    assert (tmp_path / 'gpu_bench.md').read_text().count('| float32 |') == 3


@pytest.mark.slow
def test_census_command_prints_grids_registers_and_passes(tmp_path):
    out = tmp_path / 'census.json'
    text = _run(
        osp.join(ANALYSIS, 'census.py'),
        *('--backbone', 'r18', '--path', 'attn_resnet', '--shape', '1', '3', '256', '256'),
        *('--small-shape', '1', '3', '64', '64'),
        *('--archs', '90', '--json', str(out)),
    )
    res = json.loads(out.read_text())
    assert res['summary']['spills'] == 0 and res['summary']['max_registers']['90'] <= 128
    assert {r['mode'] for r in res['rows']} == {'train', 'inference'}
    assert 'passes per module' in text


def test_a_basic_block_backbone_with_plugins_is_refused_by_name():
    """mmdet's BasicBlock (r18/r34) takes no plugins: the tools say so and name the way out."""
    with pytest.raises(ValueError, match="BasicBlock takes no plugins; use path 'attn_resnet'"):
        toolkit.mmdet_model('attn', backbone='r18', attention='cbam', path='plugin')
    assert toolkit.mmdet_model('plain', backbone='r18', path='plugin') is not None


def test_kernel_bandwidth_measures_the_reductions_at_each_warps_setting_side_by_side():
    """--over-hw-warps: the reductions over H×W are replayed once per setting (NCHW's own rule
    is 8 warps, channels-last's 4), every other launch once; the launchers' rule is restored."""
    from cbam_det.kernels import launch as L
    from cbam_det.kernels.library import SMALL_KERNELS

    if not L.INTERPRETED:
        pytest.skip("the dry run needs Triton's interpreter")
    kb = analysis_tool('kernel_bandwidth')
    kinds = ['cbam_plugin', 'se_plugin']
    shapes = {'s': (1, 24, 5, 9)}
    for channels_last, own in ((False, 8), (True, 4)):
        rows = kb.measure(kinds, shapes, torch.device('cpu'), 4.8e12, [(torch.float32, channels_last)], None, (None, 2))
        warps = {}
        for r in rows:
            warps.setdefault(r['kernel'], set()).add(r['warps'])
        reductions = ('_pool_kernel', '_se_grads_kernel', '_spatial_pool_grad_kernel')
        assert all(warps[k] == {own, 2} for k in reductions), (channels_last, warps)
        assert warps['_apply_channel_kernel'] == {L.WARPS}  # not a reduction over H×W: once
        assert all(r['bytes'] > 0 for r in rows)
        # the full-size kernels read or write N×C×H×W elements; the small ones (gates, convs) none
        assert all((r['passes'] > 0) == (r['kernel'] not in SMALL_KERNELS) for r in rows), rows
    assert L.OVER_HW_WARPS is None


def test_cuda_graph_check_dry_run_compares_replay_and_eager(tmp_path, monkeypatch):
    """cuda_graph_check.py's dry run (no capture on the CPU): the eager step against the same step
    re-run from the restored state agrees to the bit, the tables are written."""
    cg = analysis_tool('cuda_graph_check')
    argv = ['--device', 'cpu', '--width', '4', '--shape', '2', '3', '64', '64', '--repeats', '1', '--dtype', 'float32']
    assert cg.main(argv + ['--variants', 'plain', 'cbam', 'se', '--out-dir', str(tmp_path / 'a')]) == 0
    res = json.loads((tmp_path / 'a' / 'cuda_graph.json').read_text())
    assert [r['variant'] for r in res['rows']] == ['plain', 'cbam', 'se']
    for r in res['rows']:
        assert r['ok'] and not r['captured'] and r['batch_counts_equal'], r
        assert max(r['errors'].values()) == 0.0, r  # the same computation, the same bits
    assert '| cbam | auto |' in (tmp_path / 'a' / 'cuda_graph.md').read_text()

    # a step that does not repeat (dropout draws new masks) is caught: the check can fail
    monkeypatch.setitem(
        cg.VARIANTS,
        'dropout',
        (lambda w: torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Dropout(0.5)), 'torch'),
    )
    assert cg.main(argv + ['--variants', 'dropout', '--out-dir', str(tmp_path / 'b')]) == 1
    row = json.loads((tmp_path / 'b' / 'cuda_graph.json').read_text())['rows'][0]
    assert not row['ok'] and row['errors']['gradients'] > 0.01
