"""The measuring toolkit behind ``benchmark.py``, ``gpu_bench.py`` and ``census.py``: step
functions, timing with the variants alternating inside every repeat, peak memory on the CPU
and on CUDA, device constants and the bandwidth floor, the models that are measured (mmdet
backbones and detectors built from a spec, and an mmcv-free ResNet-50), and the run's
environment. Nothing here is part of the shipped package: ``cbam_det`` never imports a tool. Importing
this module puts the repository root on ``sys.path``, so the commands run from a clone.

Device constants are read from the device. Where there is none (a census or a dry run on a
CPU), the streaming-multiprocessor count is the kernels' own default
(``cbam_det.kernels.launch.DEFAULT_SMS``, an H200's 132) and the bandwidth is
:data:`DEFAULT_BANDWIDTH_TBS`; both are passed on as arguments, never written into a module.
"""

import contextlib
import datetime
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

__all__ = [
    'REPO',
    'DEFAULT_BANDWIDTH_TBS',
    'device_sms',
    'copy_bandwidth',
    'floor_ms',
    'sync',
    'outputs_sum',
    'step_fns',
    'time_alternating',
    'peak_step_bytes',
    'Bottleneck',
    'ResNet50',
    'mmdet_model',
    'environment',
    'write_results',
]

#: memory bandwidth in TB/s assumed where it cannot be measured: an H200's data-sheet 4.8 TB/s
#: (a device-to-device copy measured 4.3 TB/s on one, see :func:`copy_bandwidth`)
DEFAULT_BANDWIDTH_TBS = 4.8


# ----------------------------------------------------------------------------- device constants
def device_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device``; elsewhere the kernels' default."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_properties(device).multi_processor_count
    from cbam_det.kernels.launch import DEFAULT_SMS

    return DEFAULT_SMS


def sync(device) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def copy_bandwidth(device, default_tbs: float = DEFAULT_BANDWIDTH_TBS) -> float:
    """Bytes per second of a device-to-device copy of 1 GiB (read + write), median of 10 after
    two warm-ups; ``default_tbs`` TB/s where the device is not CUDA."""
    device = torch.device(device)
    if device.type != 'cuda':
        return default_tbs * 1e12
    src = torch.empty(2**28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / statistics.median(times[2:])


def write_results(out_dir: str, name: str, res: dict, text: str) -> None:
    """``res`` as ``out_dir/name.json`` and its table ``text`` as ``out_dir/name.md``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, f'{name}.json'), 'w') as f:
        json.dump(res, f, indent=1)
    with open(osp.join(out_dir, f'{name}.md'), 'w') as f:
        f.write(text)


def floor_ms(passes: float, nbytes: float, bandwidth: float) -> float:
    """The bandwidth floor in milliseconds: ``passes`` over ``nbytes`` at ``bandwidth`` bytes/s."""
    return passes * nbytes / bandwidth * 1e3


# ----------------------------------------------------------------------------- steps and timing
def outputs_sum(out) -> torch.Tensor:
    """The float32 sum of a model's output (a tensor, or nested lists/tuples of them)."""
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    return sum(outputs_sum(o) for o in out)


def step_fns(
    model: nn.Module,
    x: torch.Tensor,
    amp: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
    run: Optional[Callable] = None,
) -> Dict[str, Callable[[], None]]:
    """``{'inference', 'train'}``: an eval-mode forward under ``no_grad``, and a train-mode
    forward + backward of the outputs' sum (the mode switched only when it changes, as a training
    loop does: once per epoch, not per step), each under autocast to ``amp`` (None: off) and
    cbam_det's ``backend`` (None: the run's). ``run``: what is called (default ``model``; e.g.
    its compiled form)."""
    from cbam_det import kernels

    run = model if run is None else run  # (a compiled module has no truth value)

    def ctx():
        return torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def chosen():
        return kernels.use_backend(backend) if backend else contextlib.nullcontext()

    def infer():
        if model.training:  # the mode set when it changes, as a training loop does (once per epoch)
            model.eval()
        with torch.no_grad(), ctx(), chosen():
            run(x)

    def train():
        if not model.training:
            model.train()
        model.zero_grad(set_to_none=True)
        with ctx(), chosen():
            loss = outputs_sum(run(x))
        loss.backward()

    return {'inference': infer, 'train': train}


def time_alternating(
    fns: Dict[str, Dict[str, Callable[[], None]]],
    device,
    repeats: int,
    warmup: int = 1,
    kinds: Sequence[str] = ('inference', 'train'),
) -> Dict[str, Dict[str, List[float]]]:
    """Seconds of every step of every variant: ``fns[variant][kind]()``. Per kind, each variant
    warms up ``warmup`` times, then every repeat runs all variants once, in alternating order,
    so that machine noise hits them alike (compare within a repeat, not across)."""
    names = list(fns)
    times = {n: {k: [] for k in kinds} for n in names}
    for kind in kinds:
        for n in names:
            for _ in range(warmup):
                fns[n][kind]()
        for r in range(repeats):
            for n in names if r % 2 == 0 else names[::-1]:
                sync(device)
                t = time.perf_counter()
                fns[n][kind]()
                sync(device)
                times[n][kind].append(time.perf_counter() - t)
    return times


# ----------------------------------------------------------------------------- memory
def peak_step_bytes(fn: Callable[[], None], device) -> int:
    """Peak memory growth (bytes) while ``fn`` runs. CUDA: ``max_memory_allocated`` over what
    was allocated before. CPU (Linux): the peak resident set (VmHWM) over the resident set
    before, the mark reset first; meaningful in a fresh process, where freed memory of earlier
    work cannot be reused."""
    device = torch.device(device)
    if device.type == 'cuda':
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    base = _proc_status_bytes('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:  # resets VmHWM to the current RSS
        f.write('5')
    fn()
    return _proc_status_bytes('VmHWM') - base


def _proc_status_bytes(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'{key} not in /proc/self/status (the CPU memory measurement needs Linux)')


# ----------------------------------------------------------------------------- models
class Bottleneck(nn.Module):
    """ResNet bottleneck (stride on the 3×3 conv); ``att`` after the last BN (CBAM Fig. 3),
    or with that BN folded in (``fuse``: the module's ``forward_with_bn``)."""

    def __init__(self, cin: int, width: int, stride: int, att: Optional[Callable[[int], nn.Module]], fuse: bool):
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.att, self.fuse = (att(cout) if att else None), fuse
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.conv3(out)
        if self.att is not None and self.fuse:
            out = self.att.forward_with_bn(out, self.bn3)
        else:
            out = self.bn3(out)
            if self.att is not None:
                out = self.att(out)
        return F.relu(out + (x if self.down is None else self.down(x)), inplace=True)


class ResNet50(nn.Module):
    """ResNet-50 ("pytorch" style, no mmcv) returning the four stage outputs, as a detector's
    backbone does. ``att``: a factory ``channels -> module`` placed in all 16 blocks; ``bam``:
    one after each of stages 1-3 (BAM paper); ``width``: the stem's and first stage's width
    (64; smaller for dry runs)."""

    def __init__(self, att=None, fuse: bool = False, bam=None, width: int = 64) -> None:
        super().__init__()
        b = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, b, 7, 2, 3, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        stages, cin = [], b
        for i, (w, blocks) in enumerate(((b, 3), (2 * b, 4), (4 * b, 6), (8 * b, 3))):
            layers = []
            for j in range(blocks):
                layers.append(Bottleneck(cin, w, 2 if j == 0 and i > 0 else 1, att, fuse))
                cin = w * 4
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.bams = nn.ModuleList(bam(c) for c in (4 * b, 8 * b, 16 * b)) if bam else None

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x, outs = self.stem(x), []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            outs.append(x)
            if self.bams is not None and i < 3:
                x = self.bams[i](x)
        return outs


#: the attention of :func:`mmdet_model`'s ``attention`` names
ATTENTION = {'cbam': dict(type='CBAM'), 'se': dict(type='SE'), 'bam': dict(type='BAM')}


def mmdet_model(
    variant: str,
    backbone: str = 'r50',
    config: Optional[str] = None,
    attention: str = 'cbam',
    path: str = 'plugin',
    position: str = 'after_conv3',
    inplace: str = 'default',
    zero_init_residual: bool = False,
) -> nn.Module:
    """A model built with mmdet's registry (needs mmcv) for ``variant``: ``plain`` (no
    attention), ``attn`` (the attention as configured), ``attn_inplace`` (with
    ``inplace=True``), ``reference`` (``attn`` with the attention replaced by the plain eager
    implementation, eager_reference.py).

    ``config``: a detector config, of which the backbone + neck is built (deterministic work, no
    NMS or sampling); else a ``backbone`` (``r18``...``r152``) that trains every BN, with CBAM/SE
    in every block (``path='plugin'``: mmdet's ResNet with ``plugins=`` at ``position``;
    ``'attn_resnet'``: cbam_det's AttnResNet, the last BN fused) or BAM after stages 1-3.
    ``zero_init_residual=False`` by default so that attention sees real activations."""
    from eager_reference import to_reference
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import cbam_det  # noqa: F401  (only registration)

    register_all_modules()
    if config:
        from mmengine.config import Config, ConfigDict

        from cbam_det.utils import no_pretrained, strip_attention

        cfg = Config.fromfile(config).model.to_dict()
        cfg = no_pretrained(strip_attention(cfg) if variant == 'plain' else cfg)
        model = _Dense(MODELS.build(ConfigDict(cfg)))
    else:
        depth = int(backbone.lstrip('r'))
        if depth in (18, 34) and path == 'plugin' and attention in ('cbam', 'se') and variant != 'plain':
            raise ValueError(
                f"backbone {backbone!r} with path 'plugin': mmdet's BasicBlock takes no plugins; "
                f"use path 'attn_resnet' (--path attn_resnet) or a bottleneck depth (r50/r101/r152)"
            )
        cfg = dict(
            type='AttnResNet' if path == 'attn_resnet' else 'ResNet',
            depth=depth,
            norm_eval=False,
            frozen_stages=-1,
            zero_init_residual=zero_init_residual,
        )
        if variant != 'plain':
            att = dict(ATTENTION[attention])
            if variant == 'attn_inplace' or inplace == 'true':
                att['inplace'] = True
            elif inplace in ('false', 'both'):
                att['inplace'] = False
            if attention == 'bam':
                cfg['type'] = 'AttnResNet'
                cfg['bam'] = att
            elif path == 'attn_resnet':
                cfg['attention'] = att
            else:
                cfg['plugins'] = [dict(cfg=att, stages=(True,) * 4, position=position)]
        model = MODELS.build(cfg)
    if variant == 'reference':
        model = to_reference(model)
    return model


class _Dense(nn.Module):
    """A detector's backbone + neck."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        self.det = det

    def forward(self, x: torch.Tensor):
        return self.det.extract_feat(x)


# ----------------------------------------------------------------------------- environment
def environment(device) -> dict:
    """What a measurement ran on: date, host, versions, device (GPU name, SMs, driver)."""
    from cbam_det import kernels

    device = torch.device(device)
    env = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        host=platform.node(),
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=str(device),
        threads=torch.get_num_threads(),
        backend=kernels.get_backend(),
        mmcv_imported='mmcv' in sys.modules,
    )
    for name in ('timm', 'triton'):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    if device.type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(device)
        env['sms'] = device_sms(device)
        try:
            env['driver'] = subprocess.run(
                ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            env['driver'] = None
    return env
