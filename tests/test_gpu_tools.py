"""The GPU check's detector step and its wheelhouse, proven on the CPU: the wheelhouse against
its wheels' own metadata and the machine's recorded packages (tools/analysis/wheelhouse_check.py,
tools/analysis/gpu_wheelhouse.sh), and every part of tools/analysis/gpu_detector.py at tiny sizes
(the detector's training step in each precision, the profile's summary, the demo table), so that
the first device call does not fail on a typo. The whole step's dry run is slow."""

import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import tarfile
import zipfile

import pytest
import torch

from cbam_det import CBAM

from .helpers import REPO, analysis_tool

wc = analysis_tool('wheelhouse_check')
WHEELHOUSE = osp.join(REPO, 'wheelhouse', 'gpu')
REQUIREMENTS = osp.join(REPO, 'requirements', 'gpu_check.txt')
MACHINE = osp.join(REPO, 'requirements', 'gpu_machine.txt')


# ----------------------------------------------------------------------------- the wheelhouse
def _wheel(folder, name, version, requires=(), tag='py3-none-any', requires_python=None):
    """A wheel with nothing but its METADATA (what the check reads)."""
    dist = f'{name.replace("-", "_")}-{version}'
    path = osp.join(str(folder), f'{dist}-{tag}.whl')
    meta = ['Metadata-Version: 2.1', f'Name: {name}', f'Version: {version}']
    meta += [f'Requires-Dist: {r}' for r in requires]
    if requires_python:
        meta.append(f'Requires-Python: {requires_python}')
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr(f'{dist}.dist-info/METADATA', '\n'.join(meta) + '\n')
    return path


def _reqs(*lines):
    return {wc.canonicalize_name(r.split('==')[0]): wc.Requirement(r) for r in lines}


MACHINE_STAND_IN = {'numpy': wc.Version('2.5.2'), 'matplotlib': None, 'opencv-python-headless': None}


def test_a_complete_set_passes_with_its_unverified_versions_as_notes(tmp_path):
    _wheel(
        tmp_path, 'onedl-mmengine', '0.10.12', ['addict', 'numpy', 'matplotlib>=3', 'regex; sys_platform == "win32"']
    )
    _wheel(tmp_path, 'addict', '2.4.0')
    _wheel(tmp_path, 'shapely', '2.2.0', ['numpy>=1.26'], tag='cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64')
    _wheel(
        tmp_path, 'onedl-mmcv', '2.3.6', ['opencv-python', 'onedl-mmengine>=0.10.8rc1'], tag='cp312-cp312-linux_x86_64'
    )
    reqs = _reqs('onedl-mmengine==0.10.12', 'addict==2.4.0', 'shapely==2.2.0', 'onedl-mmcv==2.3.6')
    report = wc.check(str(tmp_path), reqs, MACHINE_STAND_IN)
    assert report.errors == []
    assert any('matplotlib>=3' in n and 'version not recorded' in n for n in report.notes)  # unverified, said so
    assert any('opencv-python' in n and 'opencv-python-headless' in n for n in report.notes)  # the alias, said so
    assert not any('regex' in n for n in report.notes)  # a Windows-only requirement does not apply
    assert set(report.carried) == set(reqs)


@pytest.mark.parametrize(
    'case, wheels, reqs, message',
    [
        (
            'a requirement nobody meets',
            [('a', '1.0', ['b'])],
            ['a==1.0'],
            'a 1.0 requires b: neither carried nor on the machine',
        ),
        ('a version the machine lacks', [('a', '1.0', ['numpy<2'])], ['a==1.0'], 'the machine has 2.5.2'),
        ('a carried version not wanted', [('a', '1.0', ['b>=2']), ('b', '1.5', [])], ['a==1.0', 'b==1.5'], 'is 1.5'),
        ('what the machine already has', [('numpy', '2.5.2', [])], ['numpy==2.5.2'], 'the machine already has it'),
        ('a wheel nobody asked for', [('a', '1.0', []), ('b', '1.0', [])], ['a==1.0'], 'not in the requirement list'),
        ('a listed project without a wheel', [('a', '1.0', [])], ['a==1.0', 'c==1.0'], 'c==1.0: no wheel'),
        ('another pinned version', [('a', '1.1', [])], ['a==1.0'], 'the wheel is version 1.1'),
    ],
)
def test_the_check_names_what_would_fail_on_the_machine(tmp_path, case, wheels, reqs, message):
    for name, version, requires in wheels:
        _wheel(tmp_path, name, version, requires)
    report = wc.check(str(tmp_path), _reqs(*reqs), MACHINE_STAND_IN)
    assert any(message in e for e in report.errors), (case, report.errors)


def test_the_check_refuses_wheels_for_another_python_or_platform(tmp_path):
    _wheel(tmp_path, 'a', '1.0', tag='cp311-cp311-manylinux_2_17_x86_64')
    _wheel(tmp_path, 'b', '1.0', tag='cp312-cp312-macosx_11_0_arm64')
    _wheel(tmp_path, 'c', '1.0', requires_python='<3.12')
    _wheel(tmp_path, 'd', '1.0', tag='cp312-cp312-manylinux_2_34_x86_64')  # newer glibc than assumed
    report = wc.check(str(tmp_path), _reqs('a==1.0', 'b==1.0', 'c==1.0', 'd==1.0'), {})
    assert sum('no tag fits CPython 3.12' in e for e in report.errors) == 3
    assert any('Requires-Python <3.12 excludes 3.12.3' in e for e in report.errors)


def test_two_versions_of_one_project_and_allowed_missing(tmp_path):
    _wheel(tmp_path, 'a', '1.0')
    _wheel(tmp_path, 'a', '1.1')
    report = wc.check(str(tmp_path), _reqs('a==1.0', 'onedl-mmcv==2.3.6'), {}, allow_missing=['onedl-mmcv'])
    assert any('two wheels' in e for e in report.errors)
    assert any('onedl-mmcv==2.3.6: no wheel (allowed missing)' in n for n in report.notes)
    with pytest.raises(ValueError, match='not in the requirement list'):
        wc.check(str(tmp_path), _reqs('a==1.0'), {}, allow_missing=['torch'])


def test_the_requirement_list_pins_everything_and_carries_nothing_the_machine_has():
    reqs = wc.read_requirements(REQUIREMENTS)
    machine = wc.read_machine(MACHINE)
    assert all(str(r.specifier).startswith('==') for r in reqs.values())
    assert not set(reqs) & set(machine)
    assert {'onedl-mmcv', 'onedl-mmengine', 'onedl-mmdetection', 'pycocotools'} <= set(reqs)
    assert machine['torch'] == wc.Version('2.11.0') and machine['triton'] == wc.Version('3.6.0')
    assert 'opencv-python-headless' in machine and 'opencv-python' not in machine


def test_the_wheelhouse_installs_for_python_312_beside_the_machine(tmp_path):
    """The real wheelhouse (tools/analysis/gpu_wheelhouse.sh): its metadata closure against the
    machine's recorded packages, pip's own offline install for CPython 3.12 on manylinux x86-64,
    and the tree plus the wheelhouse within one device call's 60 MiB."""
    if not osp.isdir(WHEELHOUSE) or not any(f.endswith('.whl') for f in os.listdir(WHEELHOUSE)):
        pytest.skip(
            'no wheelhouse/gpu: make it with `bash tools/analysis/gpu_wheelhouse.sh` (internet; mmcv build once)'
        )
    has_mmcv = any(f.startswith('onedl_mmcv-') for f in os.listdir(WHEELHOUSE))
    allow = [] if has_mmcv else ['onedl-mmcv']
    report = wc.check(WHEELHOUSE, wc.read_requirements(REQUIREMENTS), wc.read_machine(MACHINE), allow_missing=allow)
    assert report.errors == []
    reqs = tmp_path / 'requirements.txt'
    reqs.write_text(''.join(f'{r}\n' for n, r in wc.read_requirements(REQUIREMENTS).items() if n not in allow))
    platforms = [f'--platform=manylinux_2_{m}_x86_64' for m in (28, 24, 17)] + ['--platform=linux_x86_64']
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index', '--no-deps', '--only-binary=:all:',
         '--find-links', WHEELHOUSE, '--python-version', '3.12', '--implementation', 'cp', '--abi', 'cp312',
         *platforms, '--target', str(tmp_path / 'site'), '--report', str(tmp_path / 'report.json'), '-r', str(reqs)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed = {
        wc.canonicalize_name(i['metadata']['name'])
        for i in json.loads((tmp_path / 'report.json').read_text())['install']
    }
    assert installed == set(wc.read_requirements(REQUIREMENTS)) - set(allow)
    tree, wheels = wc.transfer_bytes(WHEELHOUSE)
    assert tree + wheels <= 60 * 2**20, (tree, wheels)
    if not has_mmcv:
        assert tree + wheels + 40 * 2**20 <= 60 * 2**20  # room for the 37 MB mmcv wheel


def test_the_wheelhouse_script_dry_run_names_the_cached_build():
    proc = subprocess.run(
        ['bash', 'tools/analysis/gpu_wheelhouse.sh', '--dry-run'], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode in (0, 3), proc.stderr  # 3: a prerequisite of the build is missing here, and named
    out = proc.stdout
    assert 'onedl-mmcv-2.3.6_py3.12_torch2.11.0_cu130-sm9_0_gcc' in out
    if proc.returncode == 3:
        assert 'cannot build:' in out
    elif 'not cached' in out:
        assert (
            'MMCV_WITH_OPS=1 FORCE_CUDA=1' in out and 'onedl-mmcv==2.3.6' in out and 'TORCH_CUDA_ARCH_LIST=9.0' in out
        )
    bad = subprocess.run(
        ['bash', 'tools/analysis/gpu_wheelhouse.sh', '--fast'], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown option '--fast'" in bad.stderr


@pytest.mark.parametrize(
    'env, message',
    [
        (dict(STEPS='tests detectors'), "STEPS: unknown step 'detectors'"),
        (dict(STEPS='detector', DETECTOR_PARTS='demos train'), "DETECTOR_PARTS: unknown part 'train'"),
        (dict(STEPS='detector', SEED='x'), "SEED: want a non-negative integer, got 'x'"),
        (dict(STEPS='detector', PACK='out.zip'), "PACK: want a .tgz file name, got 'out.zip'"),
    ],
)
def test_gpu_check_refuses_bad_settings_before_it_starts(tmp_path, env, message):
    proc = subprocess.run(
        ['bash', 'tools/analysis/gpu_check.sh', '--dry-run', str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=sys.executable, **env),
        timeout=60,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- the detector
gd = analysis_tool('gpu_detector')


def test_narrow_resizes_what_reads_the_backbone():
    fpn, optim = gd.detector_config(gd.DETECTORS['cbam'], base_width=8)
    assert fpn['backbone']['base_channels'] == 8 and fpn['neck']['in_channels'] == [32, 64, 128, 256]
    assert (
        fpn['neck']['out_channels']
        == fpn['rpn_head']['in_channels']
        == fpn['roi_head']['bbox_head']['in_channels']
        == 32
    )
    assert fpn['backbone']['attention']['type'] == 'CBAM' and optim['optimizer']['type'] == 'SGD'
    c4, _ = gd.detector_config(gd.DETECTORS['c4_plain'], base_width=8)
    assert c4['backbone']['attention'] is None and c4['roi_head']['shared_head']['attention'] is None
    assert c4['rpn_head']['in_channels'] == 128 and c4['roi_head']['bbox_head']['in_channels'] == 256
    assert c4['roi_head']['shared_head']['base_channels'] == 8
    assert all(x.get('init_cfg') is None for x in (c4['backbone'], c4['roi_head']['shared_head']))  # nothing downloaded
    with pytest.raises(ValueError, match='--base-width: backbone'):
        gd.narrow(dict(backbone=dict(type='VGG')), 8)


def _bench_args(**kw):
    args = dict(
        device='cpu', shape=(2, 3, 64, 96), variants=['cbam'], boxes=4, base_width=8, bf16_roi_align='torchvision',
        cfg_options={'model.train_cfg.rcnn.sampler.num': 16, 'model.train_cfg.rpn_proposal.nms_pre': 200},
        precisions=['float32', 'float16'], repeats=1, warmup=1,
    )  # fmt: skip
    args.update(kw)
    return argparse.Namespace(**args)


def test_the_training_step_in_each_precision_as_mmengine_runs_it():
    """float32 through OptimWrapper, float16 through AmpOptimWrapper as --amp builds it. On the CPU
    mmcv's NMS takes float32 scores only, so an AMP row may fail there, and only with that error."""
    res = gd.bench(_bench_args())
    rows = res['results']['float32']
    assert set(rows) == {'plain', 'cbam'} and res['variants']['plain']['attention'] is False
    for r in rows.values():
        assert r['error'] is None and r['train_ms'] > 0 and r['peak_bytes'] is None
        assert all(torch.isfinite(torch.tensor(v)) for v in r['losses'].values()) and 'loss_rpn_cls' in r['losses']
    assert rows['plain']['train_x'] == 1.0 and rows['cbam']['train_x'] > 0
    for r in res['results']['float16'].values():
        assert r['error'] is None or 'expected scalar type Float but found BFloat16' in r['error'], r['error']
    text = gd.bench_table(res)
    assert text.count('| float32 |') == 2 and 'faster-rcnn_r50-cbam_fpn_1x_coco.py (attention stripped)' in text


def test_amp_wrappers_and_the_bf16_roi_align():
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    model_cfg, optim_cfg = gd.detector_config(gd.DETECTORS['plain'], base_width=8)
    model = gd.build_detector(model_cfg, torch.device('cpu'))
    fp16 = gd.optim_wrapper(model, optim_cfg, 'float16', torch.device('cpu'))
    bf16 = gd.optim_wrapper(model, optim_cfg, 'bfloat16', torch.device('cpu'))
    fp32 = gd.optim_wrapper(model, optim_cfg, 'float32', torch.device('cpu'))
    assert isinstance(fp16, AmpOptimWrapper) and fp16.cast_dtype is None  # autocast's default: float16 on CUDA
    assert isinstance(bf16, AmpOptimWrapper) and bf16.cast_dtype == torch.bfloat16
    assert type(fp32) is OptimWrapper
    assert gd.set_roi_align(model, True) == 4  # one per FPN level
    assert all(m.use_torchvision for m in model.modules() if type(m).__name__ == 'RoIAlign')
    with pytest.raises(ValueError, match="precision 'half'"):
        gd.optim_wrapper(model, optim_cfg, 'half', torch.device('cpu'))


def test_make_batch_is_what_the_loader_gives():
    batch = gd.make_batch((2, 3, 64, 96), num_classes=80, boxes=5)
    assert [tuple(x.shape) for x in batch['inputs']] == [(3, 64, 96)] * 2 and batch['inputs'][0].dtype == torch.uint8
    boxes = batch['data_samples'][1].gt_instances.bboxes
    assert boxes.shape == (5, 4) and (boxes[:, 2:] > boxes[:, :2]).all() and boxes[:, 2].max() <= 96
    assert gd.make_batch((2, 3, 64, 96), 80, 5)['inputs'][1].equal(batch['inputs'][1])  # seeded


def test_union_of_kernel_intervals():
    assert gd._union_us([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4.0
    assert gd._union_us([]) == 0.0


def test_the_profile_sees_steps_kernels_and_the_attention_host_time():
    toolkit = analysis_tool('toolkit')
    model = toolkit.ResNet50(lambda c: CBAM(c), width=8)
    step = toolkit.step_fns(model, torch.randn(2, 3, 32, 32), backend='torch')['train']
    r = gd.profile_steps(step, model, torch.device('cpu'), steps=2, warmup=1, top=5)
    assert r['steps'] == 2 and len(r['per_step']) == 2 and r['attention_modules'] == 16
    assert r['attention_calls_per_step'] == 16
    assert r['attention_forward_host_ms'] > 0 and r['attention_backward_host_ms'] > 0
    assert r['attention_backward_nodes_per_step'] > 0  # autograd nodes matched to the forward by sequence number
    assert 0 < r['busy_ms'] <= r['step_ms'] and r['kernels_per_step'] > 0 and len(r['top_kernels']) == 5
    assert r['device_events'].startswith('cpu aten ops')
    assert all('forward' not in m.__dict__ and 'forward_with_bn' not in m.__dict__ for m in model.modules())


def test_the_attention_ranges_cover_the_fused_path_once():
    toolkit = analysis_tool('toolkit')
    model = toolkit.ResNet50(lambda c: CBAM(c), fuse=True, width=8)
    step = toolkit.step_fns(model, torch.randn(1, 3, 32, 32), backend='torch')['inference']
    r = gd.profile_steps(step, model, torch.device('cpu'), steps=1, warmup=0)
    assert r['attention_calls_per_step'] == 16  # forward_with_bn wrapped, nothing nested counted twice


def test_the_demo_table_puts_the_gpu_runs_beside_the_cpu_reference(tmp_path):
    coco, voc = tmp_path / 'demo_coco', tmp_path / 'demo_voc'
    for d in (coco, voc):
        d.mkdir()
    (coco / 'train.log').write_text('Iter(train) [ 25/800] lr\nIter(train) [800/800] lr\n')
    (coco / 'train.json').write_text('{"rc": 0, "seconds": 95, "limit": 270}')
    metrics = {'coco/bbox_mAP': 0.61, 'coco/bbox_mAP_50': 0.83}
    (coco / 'test.log').write_text(f'noise\ncbam_det metrics: {json.dumps(metrics)}\n')
    (coco / 'test.json').write_text('{"rc": 0, "seconds": 12, "limit": 90}')
    (voc / 'train.log').write_text('Iter(train) [500/1000] lr\n')
    (voc / 'train.json').write_text('{"rc": 124, "seconds": 270, "limit": 270}')
    ref = osp.join(REPO, 'results', 'cpu', 'demo_map.json')
    gd.main(['demos', '--run', f'coco={coco}', '--run', f'voc={voc}', '--seed', '0', '--amp', '--device', 'cpu',
             '--reference', ref, '--out-dir', str(tmp_path)])  # fmt: skip
    res = json.loads((tmp_path / 'demos.json').read_text())
    assert res['runs']['coco']['mAP'] == 0.61 and res['runs']['coco']['reached'] == '800/800'
    assert res['runs']['voc']['metrics'] is None and res['runs']['voc']['reached'] == '500/1000'
    text = (tmp_path / 'demos.md').read_text()
    assert 'train timed out at 270 s' in text and '0.832' in text and '0.707' in text and '--amp' in text


@pytest.mark.parametrize(
    'argv, message',
    [
        (['bench', '--variants', 'cbam', 'eca'], "--variants: unknown ['eca']"),
        (['bench', '--shape', '2', '3', '65', '96'], '--shape: want N 3 H W with H and W multiples of 32'),
        (['bench', '--boxes', '0'], '--boxes: want >= 1'),
        (['bench', '--repeats', '0'], '--repeats and --warmup: want >= 1'),
        (['profile', '--variants', 'plain', '--trace-variant', 'cbam'], "--trace-variant 'cbam': not among --variants"),
        (['profile', '--backbone-variants', 'resnet'], '--backbone-variants: '),  # unknown (or gpu_bench.py broken)
        (['demos', '--run', 'coco'], "--run 'coco': want NAME=DIR"),
    ],
)
def test_bad_parameters_are_named(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        gd.main([*argv, *([] if argv[0] == 'demos' else ['--device', 'cpu']), '--out-dir', str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_the_detector_step_dry_run(tmp_path):
    """STEPS=detector of gpu_check.sh on the CPU: the demos through tools/train.py and tools/test.py
    on a tiny copy of the demo data, the benchmark of every variant in every precision and the
    profile at tiny sizes, the tables printed last and everything packed into one file."""
    out, pack = tmp_path / 'gc', tmp_path / 'gc.tgz'
    proc = subprocess.run(
        ['bash', 'tools/analysis/gpu_check.sh', '--dry-run', str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=sys.executable, STEPS='detector', PACK=str(pack)),
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    demos = json.loads((out / 'demos.json').read_text())['runs']
    assert demos['coco']['mAP_50'] is not None and demos['voc']['mAP_50'] is not None
    assert demos['coco']['reached'] == '2/2' and demos['coco']['seed'] == 0
    bench = json.loads((out / 'detector_bench.json').read_text())['results']
    assert set(bench) == {'float16', 'bfloat16', 'float32'}
    assert set(bench['float32']) == set(gd.DETECTORS) and all(r['error'] is None for r in bench['float32'].values())
    prof = json.loads((out / 'detector_profile.json').read_text())
    assert set(prof['detector']) == set(gd.DETECTORS) and all('error' not in r for r in prof['detector'].values())
    assert set(prof['resnet50']) == set(gd.BACKBONE_VARIANTS) and prof['trace']['variant'] == 'cbam'
    assert prof['detector']['cbam']['attention_modules'] == 16 and prof['detector']['plain']['attention_modules'] == 0
    tail = proc.stdout[proc.stdout.index('detector rc=0') :]
    assert tail.index('Demo pipelines') < tail.index('Faster R-CNN training step') < tail.index('torch.profiler')
    with tarfile.open(pack) as t:
        names = t.getnames()
    assert (
        'gc/detector_profile.md' in names
        and 'gc/trace_detector_cbam.json.gz' in names
        and 'gc/demo_coco/test.log' in names
    )
    parts = [set(n.split('/')) for n in names]
    assert not [n for n, p in zip(names, parts) if n.endswith('.pth') or p & {'site', 'site312', 'demo_data'}]
    assert pack.stat().st_size < 16 * 2**20
