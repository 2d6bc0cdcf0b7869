"""The detector as a user trains it, on one device: the cost of attention in Faster R-CNN's
training step, where each millisecond of it goes, and the demo pipelines' mAP beside the CPU's.

    python tools/analysis/gpu_detector.py bench --out-dir work_dirs/gpu_check
    python tools/analysis/gpu_detector.py profile --out-dir work_dirs/gpu_check
    python tools/analysis/gpu_detector.py demos --run coco=work_dirs/gpu_check/demo_coco \\
        --run voc=work_dirs/gpu_check/demo_voc --amp --seed 0 --out-dir work_dirs/gpu_check
    python tools/analysis/gpu_detector.py bench --device cpu --shape 2 3 64 96 --base-width 8 --repeats 1 \\
        --warmup 1 --out-dir /tmp/dry                               # a dry run on the CPU

``bench``: the mission's detector, ``configs/faster_rcnn/faster-rcnn_r50-cbam_fpn_1x_coco.py``, built
from its config with random weights (``cbam_det.utils.no_pretrained``: nothing is downloaded), and
its variants: ``plain`` (the same config without attention, ``cbam_det.utils.strip_attention``),
``cbam`` (backend ``auto``), ``cbam_torch`` (``cbam_det.kernels.use_backend('torch')``), and the C4
detector of the CBAM paper's Table 6, ``c4_cbam`` (``faster-rcnn_r50-cbam_c4_1x_coco.py``) with its
own baseline ``c4_plain``. One training step is what mmengine's loop runs: ``model.train_step(data,
optim_wrapper)`` (data preprocessor, forward, losses, backward, optimizer step), then every logged
value read on the host as its RuntimeInfoHook does, on a batch of ``--shape`` uint8 images on the
host with ``--boxes`` random boxes and labels each (the data loader's output). Precisions:
``float16`` (mmengine's AmpOptimWrapper with a dynamic loss scale: ``tools/train.py --amp``),
``bfloat16`` (AmpOptimWrapper, ``dtype='bfloat16'``) and ``float32`` (OptimWrapper), each with the
config's optimizer. mmcv's RoIAlign has no bfloat16 kernel (its sources dispatch float, double and
half on the CPU and on CUDA), so the bfloat16 rows run it through torchvision (``use_torchvision=True``,
whose autocast rule computes it in float32); ``--bf16-roi-align mmcv`` keeps mmcv's.
Per precision: step milliseconds (median over ``--repeats``, the variants alternating inside every
repeat), × the plain detector in the same run (and × the variant's own baseline), peak memory of a
step (CUDA allocator; not measured on the CPU). A step that raises is recorded with its error.
``--base-width W`` narrows the ResNet and what reads it (:func:`narrow`) for dry runs;
``--cfg-options`` changes every variant's config as tools/train.py's does.

``profile``: torch.profiler over ``--steps`` training steps (after ``--warmup``) of each detector
variant (``--precision``, default float16 as ``--amp``) and of gpu_bench.py's ResNet-50 variants
(``--backbone-dtype`` autocast, default bfloat16 as gpu_bench's table): step time against GPU-busy
time (the union of the kernels' intervals inside the step), kernels and launch calls per step, the
top kernels by device time, and the host time of the attention modules: their forward
(a ``record_function`` range around each CBAM/SE/BAM module, fused ``forward_with_bn`` included)
and their backward (the autograd nodes their forward created, matched by sequence number). One
step of ``--trace-variant`` is written as a gzipped Chrome trace (``trace_detector_<variant>.json.gz``,
dropped over ``--trace-max-mib``). On the CPU (dry runs) the outermost aten operators stand in
for kernels.

``demos``: the demo runs of tools/analysis/gpu_check.sh (each ``--run NAME=DIR`` holds
``train.log``/``train.json`` and ``test.log``/``test.json`` of tools/train.py and tools/test.py)
beside the CPU demo figures of ``--reference`` (results/cpu/demo_map.json).

Each writes ``<name>.json`` and ``<name>.md`` into ``--out-dir`` (``detector_bench`` after each
precision, ``detector_profile`` after each variant, ``demos``). Needs the full stack (mmengine,
mmcv with ops, mmdet); on the CPU an AmpOptimWrapper is built with mmengine's accelerator check
lifted (its GradScaler then disables itself and autocast runs in bfloat16, the only CPU autocast
mmengine allows), so a dry run
exercises the float16 rows' code; mmcv's CPU NMS takes float32 scores only, so those rows fail
there with that error (its CUDA NMS reads the boxes as float32, which the box decoder's ``exp`` makes
them under CUDA autocast, and only sorts the scores).
"""

import argparse
import contextlib
import copy
import gzip
import json
import logging
import os
import os.path as osp
import re
import shutil
import statistics
import sys
import tempfile
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from toolkit import REPO, environment, peak_step_bytes, sync, time_alternating, write_results

__all__ = [
    'DetVariant',
    'DETECTORS',
    'PRECISIONS',
    'BACKBONE_VARIANTS',
    'narrow',
    'detector_config',
    'build_detector',
    'make_batch',
    'optim_wrapper',
    'set_roi_align',
    'train_step_fn',
    'bench',
    'attention_modules',
    'attention_ranges',
    'summarize',
    'profile_steps',
    'profile',
    'demo_results',
    'main',
]

FPN = 'configs/faster_rcnn/faster-rcnn_r50-cbam_fpn_1x_coco.py'
C4 = 'configs/faster_rcnn/faster-rcnn_r50-cbam_c4_1x_coco.py'


class DetVariant(NamedTuple):
    """A measured detector: its config, whether its attention is kept, cbam_det's backend for its
    steps, and the variant its own ratio is taken to."""

    config: str
    attention: bool
    backend: str = 'auto'
    baseline: str = 'plain'


DETECTORS: Dict[str, DetVariant] = {
    'plain': DetVariant(FPN, False),
    'cbam': DetVariant(FPN, True),
    'cbam_torch': DetVariant(FPN, True, 'torch'),
    'c4_plain': DetVariant(C4, False, baseline='c4_plain'),
    'c4_cbam': DetVariant(C4, True, baseline='c4_plain'),
}
PRECISIONS = ('float16', 'bfloat16', 'float32')
#: gpu_bench.py's ResNet-50 variants profiled by default
BACKBONE_VARIANTS = ('plain', 'cbam_plugin', 'cbam_fused', 'cbam_torch', 'se_plugin')
STEP = 'cbam_det_step#'
ATTN = 'cbam_det_attention:'
#: host-side calls that launch a kernel (CUDA runtime and driver)
LAUNCH_CALLS = (
    'cudaLaunchKernel',
    'cudaLaunchKernelExC',
    'cuLaunchKernel',
    'cuLaunchKernelEx',
    'cudaLaunchCooperativeKernel',
)


# ----------------------------------------------------------------------------- the detector
def narrow(model: dict, width: int) -> dict:
    """A model config with a ResNet backbone of base ``width`` (64 is ResNet-50's) and the layers
    after it resized to match: FPN's inputs, and its width, the RPN's, the RoI extractor's and
    the box head's scaled by ``width / 64``; C4's RPN, RoI extractor, shared head and box head
    read the narrower stages. For dry runs at small sizes."""
    model = copy.deepcopy(model)
    bb = model['backbone']
    if 'depth' not in bb or bb.get('type') not in ('ResNet', 'AttnResNet', 'ResNeXt', 'AttnResNeXt'):
        raise ValueError(f'--base-width: backbone {bb.get("type")!r} is not a ResNet with base_channels')
    expansion = 1 if bb['depth'] in (18, 34) else 4
    outs = [width * 2**i * expansion for i in range(4)]
    bb['base_channels'] = width
    neck, roi = model.get('neck'), model.get('roi_head') or {}
    if neck is not None and neck.get('type') == 'FPN':
        neck['in_channels'] = outs
        fpn = max(8, neck['out_channels'] * width // 64)
        neck['out_channels'] = model['rpn_head']['in_channels'] = model['rpn_head']['feat_channels'] = fpn
        roi['bbox_roi_extractor']['out_channels'] = roi['bbox_head']['in_channels'] = fpn
        if 'fc_out_channels' in roi['bbox_head']:
            roi['bbox_head']['fc_out_channels'] = max(16, roi['bbox_head']['fc_out_channels'] * width // 64)
    elif roi.get('shared_head') is not None:  # C4: stage 3 feeds the RPN, the shared head is stage 4
        roi['shared_head']['base_channels'] = width
        model['rpn_head']['in_channels'] = model['rpn_head']['feat_channels'] = outs[2]
        roi['bbox_roi_extractor']['out_channels'] = outs[2]
        roi['bbox_head']['in_channels'] = outs[3]
    else:
        raise ValueError('--base-width: only an FPN neck or a C4 shared head is resized')
    return model


def detector_config(variant: DetVariant, base_width: Optional[int] = None, cfg_options: Optional[dict] = None):
    """(model config, optim_wrapper config) of ``variant``: its config file with ``cfg_options``
    merged (keys as tools/train.py's ``--cfg-options``), without attention where the variant has
    none, without pretrained weights, at ``base_width``."""
    from mmengine.config import Config

    from cbam_det.utils import no_pretrained, strip_attention

    cfg = Config.fromfile(osp.join(REPO, variant.config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model = cfg.model.to_dict()
    model = no_pretrained(model if variant.attention else strip_attention(model))
    if base_width is not None:
        model = narrow(model, base_width)
    return model, cfg.optim_wrapper.to_dict()


def build_detector(model_cfg: dict, device: torch.device, seed: int = 0) -> nn.Module:
    """The detector from ``model_cfg`` with mmdet's registry, initialised as the runner does
    (``init_weights``), on ``device``, in training mode."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict
    from mmengine.logging import MMLogger

    import cbam_det  # noqa: F401  (only registration)

    register_all_modules(init_default_scope=True)
    torch.manual_seed(seed)
    model = MODELS.build(ConfigDict(model_cfg))
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every parameter's initialisation
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model.to(device).train()


def make_batch(shape: Sequence[int], num_classes: int, boxes: int = 10, seed: int = 0) -> dict:
    """What mmdet's data loader gives a training step: ``shape[0]`` uint8 images (C, H, W) on the
    host and their DetDataSamples with ``boxes`` random boxes and labels each."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([w, h], dtype=torch.float32)
    inputs, samples = [], []
    for i in range(n):
        inputs.append(torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=g))
        wh = (0.05 + 0.4 * torch.rand(boxes, 2, generator=g)) * size
        xy = torch.rand(boxes, 2, generator=g) * (size - wh)
        sample = DetDataSample(
            metainfo=dict(
                img_id=i,
                img_path=f'synthetic_{i}.jpg',
                ori_shape=(h, w),
                img_shape=(h, w),
                scale_factor=(1.0, 1.0),
                flip=False,
                flip_direction=None,
            )
        )
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1), labels=torch.randint(0, num_classes, (boxes,), generator=g)
        )
        sample.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@contextlib.contextmanager
def _amp_wrapper_on_cpu(device: torch.device) -> Iterator[None]:
    """mmengine's AmpOptimWrapper refuses to be built without an accelerator; on the CPU (dry runs)
    its check is lifted while it is built."""
    if device.type != 'cpu':
        yield
        return
    from mmengine.optim.optimizer import amp_optimizer_wrapper as amp

    saved = amp.is_cuda_available
    amp.is_cuda_available = lambda: True
    try:
        yield
    finally:
        amp.is_cuda_available = saved


def optim_wrapper(model: nn.Module, cfg: dict, precision: str, device: torch.device):
    """The config's optim wrapper for ``precision``: float32 as configured; float16 as
    ``tools/train.py --amp`` makes it (AmpOptimWrapper, dynamic loss scale, autocast's default
    dtype); bfloat16 the same with ``dtype='bfloat16'``."""
    from mmengine.optim import build_optim_wrapper

    if precision not in PRECISIONS:
        raise ValueError(f'precision {precision!r}; allowed: {", ".join(PRECISIONS)}')
    cfg = copy.deepcopy(cfg)
    if precision != 'float32':
        cfg['type'] = 'AmpOptimWrapper'
        cfg['loss_scale'] = 'dynamic'
        if precision == 'bfloat16':
            cfg['dtype'] = 'bfloat16'
    with _amp_wrapper_on_cpu(device), _quiet_grad_scaler():
        return build_optim_wrapper(model, cfg)


@contextlib.contextmanager
def _quiet_grad_scaler() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*GradScaler is enabled, but CUDA is not available.*')
        yield


def set_roi_align(model: nn.Module, torchvision: bool) -> int:
    """Run every mmcv RoIAlign of ``model`` through torchvision's roi_align (True) or mmcv's own
    kernels (False); returns how many were set."""
    n = 0
    for m in model.modules():
        if type(m).__name__ == 'RoIAlign' and hasattr(m, 'use_torchvision'):
            m.use_torchvision = torchvision
            n += 1
    return n


def train_step_fn(model: nn.Module, batch: dict, wrapper, backend: str = 'auto') -> Callable[[], Dict[str, float]]:
    """One training step as mmengine's IterBasedTrainLoop runs it, on cbam_det's ``backend``;
    returns the logged values (read on the host, as RuntimeInfoHook does)."""
    from cbam_det import kernels

    def step() -> Dict[str, float]:
        with kernels.use_backend(backend):
            log_vars = model.train_step(batch, optim_wrapper=wrapper)
        return {k: v.item() if isinstance(v, torch.Tensor) else float(v) for k, v in log_vars.items()}

    return step


def _error(e: BaseException) -> str:
    return f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'[:300]


def bench(args: argparse.Namespace, done: Optional[Callable[[dict], None]] = None) -> dict:
    """Step times, ratios and peak memory of ``args.variants`` in every ``args.precisions``; ``done``
    is called with the results after each precision (a time limit then leaves what was measured)."""
    device = torch.device(args.device)
    wanted = list(dict.fromkeys(['plain'] + [DETECTORS[v].baseline for v in args.variants] + list(args.variants)))
    models, optim_cfgs = {}, {}
    for name in wanted:
        model_cfg, optim_cfgs[name] = detector_config(DETECTORS[name], args.base_width, args.cfg_options)
        models[name] = build_detector(model_cfg, device)
        print(f'built {name} ({DETECTORS[name].config}, attention={DETECTORS[name].attention})', flush=True)
    num_classes = models['plain'].roi_head.bbox_head.num_classes
    batch = make_batch(args.shape, num_classes, args.boxes)
    res = dict(
        environment=environment(device),
        shape=list(args.shape),
        boxes=args.boxes,
        base_width=args.base_width,
        repeats=args.repeats,
        warmup=args.warmup,
        cfg_options=args.cfg_options,
        variants={n: DETECTORS[n]._asdict() for n in wanted},
        results={},
    )
    for precision in args.precisions:
        tv = precision == 'bfloat16' and args.bf16_roi_align == 'torchvision'
        rows: Dict[str, dict] = {}
        fns = {}
        for name in wanted:
            set_roi_align(models[name], tv)
            wrapper = optim_wrapper(models[name], optim_cfgs[name], precision, device)
            step = train_step_fn(models[name], batch, wrapper, DETECTORS[name].backend)
            rows[name] = dict(roi_align='torchvision' if tv else 'mmcv', error=None)
            try:  # the first step: compilation, cuDNN and allocator warm-up, and whether it runs at all
                rows[name]['losses'] = step()
            except Exception as e:  # recorded, not fatal: e.g. an op without a kernel for this dtype
                rows[name]['error'] = _error(e)
                print(f'{precision} {name}: {rows[name]["error"]}', flush=True)
                continue
            fns[name] = {'train': step}
        try:
            times = time_alternating(fns, device, args.repeats, max(args.warmup - 1, 0), kinds=('train',))
        except Exception as e:  # e.g. out of memory in a later step: the precision's rows say so
            for name in fns:
                rows[name]['error'] = f'while timing: {_error(e)}'
            fns, times = {}, {}
        for name in fns:
            r = rows[name]
            r['train_ms'] = statistics.median(times[name]['train']) * 1e3
            r['train_ms_all'] = [t * 1e3 for t in times[name]['train']]
            try:
                r['peak_bytes'] = peak_step_bytes(fns[name]['train'], device) if device.type == 'cuda' else None
            except Exception as e:
                r['peak_bytes'], r['error'] = None, f'while measuring memory: {_error(e)}'
        for name, r in rows.items():
            for ratio, base in (('train_x', 'plain'), ('train_x_baseline', DETECTORS[name].baseline)):
                ok = r.get('train_ms') is not None and rows[base].get('train_ms') is not None
                r[ratio] = r['train_ms'] / rows[base]['train_ms'] if ok else None
            ok = r.get('peak_bytes') is not None and rows['plain'].get('peak_bytes')
            r['memory_x'] = r['peak_bytes'] / rows['plain']['peak_bytes'] if ok else None
        res['results'][precision] = rows
        print(f'{precision}: done', flush=True)
        if done is not None:
            done(res)
    return res


def _cell(v, spec: str = '.3f') -> str:
    return '-' if v is None else format(v, spec)


def bench_table(res: dict) -> str:
    e = res['environment']
    lines = [
        f'Faster R-CNN training step (mmengine train_step: data preprocessor, forward, losses, backward, '
        f'optimizer step), {e.get("gpu", e["device"])}, torch {e["torch"]}, CUDA {e["cuda"]}, triton {e["triton"]}, '
        f'{e["date"]}; input {"x".join(map(str, res["shape"]))} with {res["boxes"]} boxes per image, '
        f'ResNet-50 base width {res["base_width"] or 64}; median of {res["repeats"]} steps, variants alternating',
        '',
        '| precision | variant | config | backend | step ms | × plain | × own baseline | peak MiB | × '
        '| RoIAlign | error |',
        '|---|---|---|---|---:|---:|---:|---:|---:|---|---|',
    ]
    for precision, rows in res['results'].items():
        for name, r in rows.items():
            v = res['variants'][name]
            mem = r.get('peak_bytes')
            cells = [
                precision,
                name,
                osp.basename(v['config']) + ('' if v['attention'] else ' (attention stripped)'),
                v['backend'] if v['attention'] else '-',
                _cell(r.get('train_ms'), '.2f'),
                _cell(r.get('train_x')),
                _cell(r.get('train_x_baseline')) if v['baseline'] != 'plain' else '-',
                '-' if mem is None else f'{mem / 2**20:.0f}',
                _cell(r.get('memory_x')),
                r['roi_align'],
                r['error'] or '',
            ]
            lines.append('| ' + ' | '.join(cells) + ' |')
    lines += [
        '',
        'float16: AmpOptimWrapper as tools/train.py --amp; bfloat16: AmpOptimWrapper(dtype=bfloat16); '
        'float32: OptimWrapper; × own baseline: c4_cbam over c4_plain.',
    ]
    return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------- profiling
def attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The outermost attention modules of ``model`` (cbam_det's CBAM, SE, BAM; the eager reference
    and timm's CBAM of gpu_bench.py), by name."""
    from cbam_det import BAM, CBAM, SE

    out: List[Tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, (CBAM, SE, BAM)) or type(m).__name__ in ('EagerCBAM', 'CbamModule'):
            if not any(name.startswith(n + '.') for n, _ in out):
                out.append((name, m))
    return out


@contextlib.contextmanager
def attention_ranges(model: nn.Module) -> Iterator[List[str]]:
    """A ``record_function`` range named ``cbam_det_attention:<module>`` around every call of an
    attention module's ``forward`` and ``forward_with_bn`` (the fused path), none nested; yields
    the modules' names."""
    from torch.profiler import record_function

    mods = attention_modules(model)
    depth = [0]

    def wrap(fn: Callable, label: str) -> Callable:
        def wrapped(*args, **kwargs):
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            try:
                with record_function(label):
                    return fn(*args, **kwargs)
            finally:
                depth[0] -= 1

        return wrapped

    patched = []
    for name, m in mods:
        for attr in ('forward', 'forward_with_bn'):
            fn = getattr(m, attr, None)
            if fn is not None:
                object.__setattr__(m, attr, wrap(fn, ATTN + name))  # the instance's attribute shadows the method
                patched.append((m, attr))
    try:
        yield [n for n, _ in mods]
    finally:
        for m, attr in patched:
            object.__delattr__(m, attr)


def _union_us(intervals: List[Tuple[float, float]]) -> float:
    total, end = 0.0, float('-inf')
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _in_attention(e) -> bool:
    p = e.cpu_parent
    while p is not None:
        if p.name.startswith(ATTN):
            return True
        p = p.cpu_parent
    return False


def summarize(events, steps: int, device: torch.device, top: int = 15) -> dict:
    """Per step (medians over the profiled steps): step and GPU-busy milliseconds, kernels and
    launch calls, the attention modules' host time (forward ranges; backward: the autograd nodes
    their forward created); the ``top`` kernels by device time."""
    from torch.autograd import DeviceType

    step_events = sorted((e for e in events if e.name.startswith(STEP)), key=lambda e: e.time_range.start)
    if len(step_events) != steps:
        raise RuntimeError(f'profile: {len(step_events)} step ranges recorded, {steps} run')
    if device.type == 'cuda':
        dev = [e for e in events if e.device_type == DeviceType.CUDA]
        stand_in = False
    else:  # dry run: the outermost aten operators stand in for kernels
        dev = [
            e
            for e in events
            if e.name.startswith('aten::') and (e.cpu_parent is None or not e.cpu_parent.name.startswith('aten::'))
        ]
        stand_in = True
    copies = [e for e in dev if e.name.startswith(('Memcpy', 'Memset'))]
    kernels = [e for e in dev if not e.name.startswith(('Memcpy', 'Memset'))]
    per_step = []
    for s in step_events:
        a, b = s.time_range.start, s.time_range.end
        inside = [k for k in kernels if a <= k.time_range.start < b]
        per_step.append(
            dict(
                step_ms=(b - a) / 1e3,
                busy_ms=_union_us([(k.time_range.start, min(k.time_range.end, b)) for k in inside]) / 1e3,
                kernels=len(inside),
                copies=sum(1 for c in copies if a <= c.time_range.start < b),
                launch_calls=sum(1 for e in events if e.name in LAUNCH_CALLS and a <= e.time_range.start < b),
            )
        )
    fwd_ranges = [e for e in events if e.name.startswith(ATTN)]
    keys = {(e.thread, e.sequence_nr) for e in events if e.sequence_nr >= 0 and _in_attention(e)}
    keys |= {(e.thread, e.sequence_nr) for e in fwd_ranges if e.sequence_nr >= 0}
    bwd = [
        e
        for e in events
        if e.name.startswith('autograd::engine::evaluate_function') and (e.fwd_thread, e.sequence_nr) in keys
    ]
    by_name: Dict[str, List[float]] = {}
    for k in kernels:
        by_name.setdefault(k.name, []).append((k.time_range.end - k.time_range.start) / 1e3)
    total = sum(sum(v) for v in by_name.values()) or 1.0
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    med = {k: statistics.median(p[k] for p in per_step) for k in per_step[0]}
    return dict(
        steps=steps,
        device_events='cpu aten ops (dry-run stand-in for kernels)' if stand_in else 'cuda kernels',
        step_ms=med['step_ms'],
        busy_ms=med['busy_ms'],
        busy_fraction=med['busy_ms'] / med['step_ms'] if med['step_ms'] else None,
        kernels_per_step=med['kernels'],
        copies_per_step=med['copies'],
        launch_calls_per_step=med['launch_calls'],
        per_step=per_step,
        attention_calls_per_step=len(fwd_ranges) / steps,
        attention_forward_host_ms=sum(e.time_range.end - e.time_range.start for e in fwd_ranges) / 1e3 / steps,
        attention_backward_host_ms=sum(e.time_range.end - e.time_range.start for e in bwd) / 1e3 / steps,
        attention_backward_nodes_per_step=len(bwd) / steps,
        top_kernels=[
            dict(name=n, ms_per_step=sum(v) / steps, calls_per_step=len(v) / steps, share=sum(v) / total)
            for n, v in ranked
        ],
    )


def profile_steps(
    step: Callable[[], object],
    model: nn.Module,
    device: torch.device,
    steps: int,
    warmup: int,
    top: int = 15,
    trace: Optional[str] = None,
) -> dict:
    """:func:`summarize` of ``steps`` profiled calls of ``step`` after ``warmup`` unprofiled ones,
    with the attention modules of ``model`` in ranges; ``trace``: also write a gzipped Chrome trace."""
    from torch.profiler import ProfilerActivity, profile, record_function

    for _ in range(warmup):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with attention_ranges(model) as names, profile(activities=activities) as prof:
        for i in range(steps):
            with record_function(f'{STEP}{i}'):
                step()
                sync(device)
    out = summarize(prof.events(), steps, device, top)
    out['attention_modules'] = len(names)
    if trace:
        with tempfile.TemporaryDirectory() as tmp:
            raw = osp.join(tmp, 'trace.json')
            prof.export_chrome_trace(raw)
            with open(raw, 'rb') as f, gzip.open(trace, 'wb', compresslevel=6) as g:
                shutil.copyfileobj(f, g)
    return out


def profile(args: argparse.Namespace, done: Optional[Callable[[dict], None]] = None) -> dict:
    """The profile of every detector variant (``args.precision``) and ResNet-50 variant
    (``args.backbone_dtype``); one step of ``args.trace_variant`` as a trace; ``done`` is called
    with the results after each variant."""
    from toolkit import step_fns

    device = torch.device(args.device)
    res = dict(
        environment=environment(device),
        shape=list(args.shape),
        base_width=args.base_width,
        steps=args.steps,
        warmup=args.warmup,
        precision=args.precision,
        backbone_dtype=args.backbone_dtype,
        cfg_options=args.cfg_options,
        detector={},
        resnet50={},
        trace=None,
    )
    batch = None
    for name in args.variants:
        v = DETECTORS[name]
        model_cfg, optim_cfg = detector_config(v, args.base_width, args.cfg_options)
        model = build_detector(model_cfg, device)
        if batch is None:
            batch = make_batch(args.shape, model.roi_head.bbox_head.num_classes, args.boxes)
        tv = args.precision == 'bfloat16' and args.bf16_roi_align == 'torchvision'
        set_roi_align(model, tv)
        step = train_step_fn(model, batch, optim_wrapper(model, optim_cfg, args.precision, device), v.backend)
        try:
            res['detector'][name] = profile_steps(step, model, device, args.steps, args.warmup, args.top)
            if name == args.trace_variant:
                path = osp.join(args.out_dir, f'trace_detector_{name}.json.gz')
                profile_steps(step, model, device, 1, 0, args.top, trace=path)
                size = osp.getsize(path)
                if size > args.trace_max_mib * 2**20:
                    os.remove(path)
                    print(f'trace of {name}: {size / 2**20:.1f} MiB > --trace-max-mib {args.trace_max_mib}: dropped')
                else:
                    res['trace'] = dict(file=osp.basename(path), bytes=size, variant=name)
        except Exception as e:  # recorded, not fatal
            res['detector'][name] = dict(error=_error(e))
        print(f'profiled detector {name}', flush=True)
        if done is not None:
            done(res)
        del model, step
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    if not args.backbone_variants:
        return res
    from gpu_bench import variants as backbone_variants

    specs = backbone_variants(args.base_width or 64)
    amp = None if args.backbone_dtype == 'float32' else getattr(torch, args.backbone_dtype)
    x = torch.randn(*args.shape, device=device)
    for name in args.backbone_variants:
        spec = specs[name]
        torch.manual_seed(0)
        model = spec.make().to(device)
        xin = x
        if spec.channels_last:
            model, xin = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        run = torch.compile(model) if spec.compiled else model
        step = step_fns(model, xin, amp=amp, backend=spec.backend or 'auto', run=run)['train']
        try:
            res['resnet50'][name] = profile_steps(step, model, device, args.steps, args.warmup, args.top)
        except Exception as e:
            res['resnet50'][name] = dict(error=_error(e))
        print(f'profiled resnet50 {name}', flush=True)
        if done is not None:
            done(res)
        del model, step
    return res


def _short(name: str, n: int = 90) -> str:
    name = name.replace('|', '/')
    return name if len(name) <= n else name[: n - 1] + '…'


def profile_table(res: dict, top: int = 5) -> str:
    e = res['environment']
    lines = [
        f'torch.profiler, {e.get("gpu", e["device"])}, torch {e["torch"]}, {e["date"]}; '
        f'input {"x".join(map(str, res["shape"]))}; {res["steps"]} profiled steps after {res["warmup"]} (medians); '
        f'detector {res["precision"]}, ResNet-50 {res["backbone_dtype"]}',
        '',
        '| model | variant | step ms | GPU busy ms | busy | kernels / step | launch calls / step | attention modules '
        '| attention host ms: forward | backward |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for model in ('detector', 'resnet50'):
        for name, r in res[model].items():
            if 'error' in r:
                lines.append(f'| {model} | {name} | failed: {r["error"]} | | | | | | | |')
                continue
            lines.append(
                f'| {model} | {name} | {r["step_ms"]:.2f} | {r["busy_ms"]:.2f} | {_cell(r["busy_fraction"], ".0%")} '
                f'| {r["kernels_per_step"]:.0f} | {r["launch_calls_per_step"]:.0f} | {r["attention_modules"]} '
                f'| {r["attention_forward_host_ms"]:.2f} | {r["attention_backward_host_ms"]:.2f} |'
            )
    lines += [
        '',
        f'Top {top} kernels by device time per step:',
        '',
        '| model | variant | kernel | ms / step | calls / step | share |',
    ]
    lines.append('|---|---|---|---:|---:|---:|')
    for model in ('detector', 'resnet50'):
        for name, r in res[model].items():
            for k in r.get('top_kernels', [])[:top]:
                lines.append(
                    f'| {model} | {name} | `{_short(k["name"])}` | {k["ms_per_step"]:.3f} | {k["calls_per_step"]:.0f} '
                    f'| {k["share"]:.0%} |'
                )
    if res.get('trace'):
        lines += [
            '',
            f'Trace of one detector step ({res["trace"]["variant"]}): {res["trace"]["file"]} '
            f'({res["trace"]["bytes"] / 2**20:.1f} MiB)',
        ]
    return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------- the demos
def _metrics(path: str) -> Optional[dict]:
    if not osp.isfile(path):
        return None
    found = None
    with open(path, errors='replace') as f:
        for line in f:
            if line.startswith('cbam_det metrics: '):
                found = json.loads(line[len('cbam_det metrics: ') :])
    return found


def _status(path: str) -> Optional[dict]:
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _last_iter(path: str) -> Optional[str]:
    if not osp.isfile(path):
        return None
    found = None
    with open(path, errors='replace') as f:
        for line in f:
            m = re.search(r'Iter\(train\)\s*\[\s*(\d+)/(\d+)\]', line)
            if m:
                found = f'{m.group(1)}/{m.group(2)}'
    return found


def demo_results(runs: Dict[str, str], reference: Optional[dict], seed: Optional[int], amp: bool) -> dict:
    """Each demo run (``name -> folder``): train and test status and seconds, the iteration reached,
    the mAP tools/test.py printed; the CPU reference figures of the same demo beside it."""
    out = {}
    for name, folder in runs.items():
        m = _metrics(osp.join(folder, 'test.log'))
        r = dict(
            folder=folder,
            train=_status(osp.join(folder, 'train.json')),
            test=_status(osp.join(folder, 'test.json')),
            reached=_last_iter(osp.join(folder, 'train.log')),
            metrics=m,
            seed=seed,
            amp=amp,
        )
        if m is not None and 'coco/bbox_mAP' in m:
            r['mAP'], r['mAP_50'] = m['coco/bbox_mAP'], m['coco/bbox_mAP_50']
        elif m is not None and 'pascal_voc/mAP' in m:
            r['mAP'], r['mAP_50'] = None, m['pascal_voc/mAP']
        r['reference'] = (reference or {}).get(name, [])
        out[name] = r
    return out


def demos_table(res: dict) -> str:
    e = res['environment']
    lines = [
        f'Demo pipelines through tools/train.py{" --amp" if res["amp"] else ""} (full schedule) and tools/test.py, '
        f'{e.get("gpu", e["device"])}, torch {e["torch"]}, {e["date"]}, seed {res["seed"]}; CPU: the reference figures',
        '',
        '| demo | where | train s | test s | iterations | mAP | mAP@0.5 | seed | note |',
        '|---|---|---:|---:|---|---:|---:|---|---|',
    ]
    for name, r in res['runs'].items():
        tr, te = r['train'] or {}, r['test'] or {}
        note = []
        for what, s in (('train', tr), ('test', te)):
            if s.get('rc') == 124:
                note.append(f'{what} timed out at {s.get("limit")} s')
            elif s.get('rc'):
                note.append(f'{what} failed (rc {s["rc"]})')
        cells = [name, e.get('gpu', e['device']), tr.get('seconds', '-'), te.get('seconds', '-'), r['reached'] or '-']
        cells += [_cell(r.get('mAP')), _cell(r.get('mAP_50')), r['seed'], '; '.join(note)]
        lines.append('| ' + ' | '.join(map(str, cells)) + ' |')
        for ref in r['reference']:
            cells = [name, f'CPU: {ref.get("machine", "?")}, {ref.get("date", "?")}', ref.get('train_seconds', '-')]
            cells += ['-', '-', _cell(ref.get('mAP')), _cell(ref.get('mAP_50'))]
            cells += ['not recorded' if ref.get('seed') is None else ref['seed'], ref.get('command', '')]
            lines.append('| ' + ' | '.join(map(str, cells)) + ' |')
    return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------- command line
def _add_model_options(p: argparse.ArgumentParser, variants_default: Sequence[str]) -> None:
    from mmengine.config import DictAction

    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--shape', type=int, nargs=4, default=(2, 3, 800, 1344), metavar=('N', 'C', 'H', 'W'))
    p.add_argument('--variants', nargs='+', default=list(variants_default), help=f'of {", ".join(DETECTORS)}')
    p.add_argument('--boxes', type=int, default=10, help='ground-truth boxes per image (10)')
    p.add_argument('--base-width', type=int, help='ResNet base width (64); smaller for dry runs')
    p.add_argument('--bf16-roi-align', choices=['torchvision', 'mmcv'], default='torchvision')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='merged into every config, key=value')
    p.add_argument('--out-dir', required=True)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    unknown = sorted(set(args.variants) - set(DETECTORS))
    if unknown:
        parser.error(f'--variants: unknown {unknown}; allowed: {", ".join(DETECTORS)}')
    if args.shape[1] != 3 or min(args.shape) < 1 or args.shape[2] % 32 or args.shape[3] % 32:
        parser.error(f'--shape: want N 3 H W with H and W multiples of 32 (the FPN strides), got {list(args.shape)}')
    if args.boxes < 1:
        parser.error(f'--boxes: want >= 1, got {args.boxes}')
    if args.base_width is not None and args.base_width < 1:
        parser.error(f'--base-width: want >= 1, got {args.base_width}')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available here (use --device cpu for a dry run)')


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    b = sub.add_parser('bench', help='step time and memory of each variant in each precision')
    _add_model_options(b, list(DETECTORS))
    b.add_argument('--precisions', nargs='+', default=list(PRECISIONS), choices=PRECISIONS)
    b.add_argument('--repeats', type=int, default=5)
    b.add_argument('--warmup', type=int, default=2, help='steps before timing, the first included (>= 1 is run)')
    p = sub.add_parser('profile', help='torch.profiler of the detector and ResNet-50 variants')
    _add_model_options(p, list(DETECTORS))
    p.add_argument('--precision', default='float16', choices=PRECISIONS, help='of the detector steps')
    p.add_argument('--backbone-variants', nargs='*', default=list(BACKBONE_VARIANTS), help="gpu_bench.py's variants")
    p.add_argument('--backbone-dtype', default='bfloat16', choices=['float32', 'float16', 'bfloat16'])
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--top', type=int, default=15, help='kernels listed per variant')
    p.add_argument('--trace-variant', default='cbam', help="detector variant whose step is traced ('none': no trace)")
    p.add_argument('--trace-max-mib', type=float, default=15.0)
    d = sub.add_parser('demos', help="the demo runs' mAP beside the CPU reference")
    d.add_argument('--run', action='append', required=True, metavar='NAME=DIR', help='a demo run folder, e.g. coco=DIR')
    d.add_argument('--reference', default=osp.join(REPO, 'results', 'cpu', 'demo_map.json'))
    d.add_argument('--seed', type=int)
    d.add_argument('--amp', action='store_true', help='the runs trained with --amp')
    d.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    d.add_argument('--out-dir', required=True)
    args = parser.parse_args(argv)

    if args.command == 'demos':
        runs = {}
        for item in args.run:
            name, sep, folder = item.partition('=')
            if not sep or not name or not osp.isdir(folder):
                parser.error(f'--run {item!r}: want NAME=DIR with an existing folder')
            runs[name] = folder
        reference = None
        if args.reference:
            if not osp.isfile(args.reference):
                parser.error(f'--reference: no file {args.reference}')
            with open(args.reference) as f:
                reference = json.load(f)
        res = dict(
            environment=environment(torch.device(args.device)),
            seed=args.seed,
            amp=args.amp,
            runs=demo_results(runs, reference, args.seed, args.amp),
        )
        text = demos_table(res)
        write_results(args.out_dir, 'demos', res, text)
        print(text)
        return

    _check(parser, args)
    if args.command == 'bench':
        if args.repeats < 1 or args.warmup < 1:
            parser.error(f'--repeats and --warmup: want >= 1, got {args.repeats} and {args.warmup}')
        res = bench(args, done=lambda r: write_results(args.out_dir, 'detector_bench', r, bench_table(r)))
        text = bench_table(res)
    else:
        if args.trace_variant != 'none' and args.trace_variant not in args.variants:
            parser.error(f'--trace-variant {args.trace_variant!r}: not among --variants {args.variants} (or none)')
        if args.backbone_variants:
            try:
                from gpu_bench import variants as backbone_variants
            except Exception as e:
                parser.error(
                    f'--backbone-variants: gpu_bench.py does not import ({_error(e)}); '
                    'give --backbone-variants without names to profile the detectors alone'
                )
            allowed = list(backbone_variants(8))
            unknown = sorted(set(args.backbone_variants) - set(allowed))
            if unknown:
                parser.error(f'--backbone-variants: unknown {unknown}; allowed: {", ".join(allowed)}')
        if args.steps < 1 or args.warmup < 0:
            parser.error(f'--steps >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}')
        os.makedirs(args.out_dir, exist_ok=True)
        res = profile(args, done=lambda r: write_results(args.out_dir, 'detector_profile', r, profile_table(r)))
        text = profile_table(res)
        write_results(args.out_dir, 'detector_profile', res, text)
    print(text)


if __name__ == '__main__':
    sys.exit(main())
