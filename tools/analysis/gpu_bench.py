"""Cost of attention in a ResNet-50 on one device, each figure a ratio to the plain network
measured in the same run (CBAM paper Fig. 3 placement; BAM paper: after stages 1-3), beside
its bandwidth floor.

    CBAM_DET_LAYERS_ONLY=1 python tools/analysis/gpu_bench.py --out-dir work_dirs/gpu_check
    CBAM_DET_LAYERS_ONLY=1 python tools/analysis/gpu_bench.py --variants plain_compiled cbam_compiled \\
        cbam_eager_compiled --dtypes bfloat16 --out-dir work_dirs/gpu_check/compiled
    python tools/analysis/gpu_bench.py --device cpu --shape 1 3 64 96 --repeats 1 --out-dir /tmp/dry

Variants (same ResNet-50, torchvision/mmdet "pytorch" style, ``zero_init_residual`` off so
the attention sees real activations): ``plain``; ``cbam_eager`` (the obvious eager CBAM with
our weights, cbam_det.utils.eager); ``cbam_timm`` (timm's ``CbamModule``, when timm is
installed); ``cbam_plugin`` (ours after each block's last BN, ``inplace=True`` as mmdet's
ResNet builds it); ``cbam_fused`` (ours with the last BN folded in, AttnResNet's
``fuse_attention``); ``cbam_torch`` (the plugin on the ``torch`` backend); ``se_plugin``;
``bam3``; the choices a GPU user also has: ``plain_compiled``, ``cbam_compiled`` (our plugin
under ``torch.compile``: ``auto`` runs the ``torch`` path, which inductor fuses) and
``cbam_eager_compiled`` (inductor writes the eager CBAM's kernels itself), and channels-last
``plain_cl`` / ``cbam_plugin_cl``. CBAM and SE sit in all 16 blocks. The default list leaves
out the compiled ones (each costs minutes of compilation): name them with ``--variants``.

Per dtype (float32, and bfloat16 autocast): inference (eval, no_grad) and a training step
(forward + backward of the outputs' sum) in milliseconds, medians over ``--repeats`` with
the variants alternating inside every repeat; peak memory of a training step from
``torch.cuda.max_memory_allocated`` (CPU: not measured). Ratios are to ``plain``, and to the
variant's own baseline (``plain_compiled`` / ``plain_cl``) where it has one.

The floor of a variant: the full-size bytes its attention must move, passes × bytes of each
module's input (passes counted by cbam_det.kernels.census in Triton's interpreter: CBAM 10 per
training step and 4 per inference, SE 7 and 3, BAM 5 and 2) over the device's copy bandwidth
(measured on CUDA; ``--bandwidth`` TB/s elsewhere). ``extra`` is the variant's time minus the
plain network's; ``× floor`` is extra / floor. Writes ``gpu_bench.json`` and ``gpu_bench.md``.
Needs torch and cbam_det's layers only.
"""

import argparse
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
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from cbam_det import BAM, CBAM, SE, kernels  # noqa: E402
from cbam_det.kernels import census  # noqa: E402
from cbam_det.utils.eager import EagerCBAM  # noqa: E402


# ----------------------------------------------------------------------------- ResNet-50
class Bottleneck(nn.Module):
    """ResNet bottleneck (stride on the 3×3 conv); ``att`` after the last BN (CBAM Fig. 3)."""

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
    """ResNet-50 returning the four stage outputs (as a detector's backbone does)."""

    #: base width of the stem and the first stage (64: ResNet-50; the dry run uses a slimmer one)
    base = 64

    def __init__(self, att=None, fuse: bool = False, bam=None) -> None:
        super().__init__()
        b = self.base
        self.stem = nn.Sequential(
            nn.Conv2d(3, b, 7, 2, 3, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        stages, cin = [], b
        for i, (width, blocks) in enumerate(((b, 3), (2 * b, 4), (4 * b, 6), (8 * b, 3))):
            layers = []
            for j in range(blocks):
                layers.append(Bottleneck(cin, width, 2 if j == 0 and i > 0 else 1, att, fuse))
                cin = width * 4
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


def timm_cbam() -> Optional[Callable[[int], nn.Module]]:
    try:
        from timm.layers.cbam import CbamModule
    except ImportError:  # no timm: the variant is left out (the JSON records timm=None)
        return None
    return lambda c: CbamModule(c)


class Variant(NamedTuple):
    """A benchmarked network: its factory, the cbam_det backend (None: the run's), whether it is
    compiled or channels-last, the attention kind whose passes give its floor, its baseline."""

    make: Callable[[], nn.Module]
    backend: Optional[str] = None
    compiled: bool = False
    channels_last: bool = False
    kind: Optional[str] = None  # a census kind, None: no attention
    baseline: str = 'plain'


def variants() -> Dict[str, Variant]:
    plugin = lambda: ResNet50(lambda c: CBAM(c, inplace=True))  # noqa: E731
    eager = lambda: ResNet50(lambda c: EagerCBAM(CBAM(c)))  # noqa: E731
    out = {
        'plain': Variant(ResNet50),
        'cbam_eager': Variant(eager, kind='cbam_plugin'),
        'cbam_plugin': Variant(plugin, kind='cbam_plugin'),
        'cbam_fused': Variant(lambda: ResNet50(lambda c: CBAM(c, inplace=True), fuse=True), kind='cbam_fused'),
        'cbam_torch': Variant(plugin, 'torch', kind='cbam_plugin'),
        'se_plugin': Variant(lambda: ResNet50(lambda c: SE(c, inplace=True)), kind='se_plugin'),
        'bam3': Variant(lambda: ResNet50(bam=lambda c: BAM(c, inplace=True)), kind='bam'),
        'plain_cl': Variant(ResNet50, channels_last=True, baseline='plain_cl'),
        'cbam_plugin_cl': Variant(plugin, channels_last=True, kind='cbam_plugin', baseline='plain_cl'),
        'plain_compiled': Variant(ResNet50, compiled=True, baseline='plain_compiled'),
        'cbam_compiled': Variant(plugin, compiled=True, kind='cbam_plugin', baseline='plain_compiled'),
        'cbam_eager_compiled': Variant(eager, compiled=True, kind='cbam_plugin', baseline='plain_compiled'),
    }
    timm = timm_cbam()
    if timm is not None:
        out['cbam_timm'] = Variant(lambda: ResNet50(timm), kind='cbam_plugin')
    return out


DEFAULT_VARIANTS = [n for n, v in variants().items() if not v.compiled]


# ----------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def step_fns(model: nn.Module, run: Callable, x: torch.Tensor, amp: Optional[torch.dtype], backend: Optional[str]):
    """Inference and training step of ``model``, called through ``run`` (the model or its compiled form)."""
    ctx = lambda: torch.autocast(x.device.type, dtype=amp, enabled=amp is not None)  # noqa: E731
    chosen = lambda: kernels.use_backend(backend) if backend else contextlib.nullcontext()  # noqa: E731

    def infer():
        model.eval()
        with torch.no_grad(), ctx(), chosen():
            run(x)

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        with ctx(), chosen():
            loss = sum(o.float().sum() for o in run(x))
        loss.backward()

    return {'inference': infer, 'train': train}


def peak_train_memory(fn: Callable[[], None], device: torch.device) -> Optional[int]:
    if device.type != 'cuda':
        return None
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def attention_bytes(model: nn.Module, x: torch.Tensor, amp: Optional[torch.dtype]) -> int:
    """Σ over the attention modules of their full-size input's bytes: the blocks' conv3 outputs
    (CBAM/SE in every block) or the BAM modules' inputs, seen in one inference."""
    sizes: List[int] = []

    def hook(_m, args, out):
        t = out if isinstance(out, torch.Tensor) else args[0]
        sizes.append(t.numel() * (2 if amp is not None else t.element_size()))

    targets = [b.conv3 for s in model.stages for b in s if b.att is not None]
    targets += list(model.bams) if model.bams is not None else []
    handles = [t.register_forward_hook(hook) for t in targets]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return sum(sizes)


def copy_bandwidth(device: torch.device, default_tbs: float) -> float:
    """Bytes per second of a device-to-device copy of 1 GiB (read + write), median of 10; the
    ``default_tbs`` TB/s where the device is not CUDA."""
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


def measure(args, device: torch.device, amp: Optional[torch.dtype], passes: dict, bandwidth: float) -> Dict[str, dict]:
    torch.manual_seed(0)
    x = torch.randn(*args.shape, device=device)
    specs = {k: v for k, v in variants().items() if k in args.variants}
    models, fns = {}, {}
    for name, v in specs.items():
        torch.manual_seed(0)
        model = v.make().to(device)
        xin = x
        if v.channels_last:
            model, xin = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        models[name] = model
        fns[name] = step_fns(model, torch.compile(model) if v.compiled else model, xin, amp, v.backend)
    times: Dict[str, Dict[str, List[float]]] = {n: {'inference': [], 'train': []} for n in specs}
    names = list(specs)
    for kind in ('inference', 'train'):
        for n in names:
            for _ in range(args.warmup):
                fns[n][kind]()
        for r in range(args.repeats):
            for n in names if r % 2 == 0 else names[::-1]:
                sync(device)
                t = time.perf_counter()
                fns[n][kind]()
                sync(device)
                times[n][kind].append(time.perf_counter() - t)
    result = {}
    for n in names:
        result[n] = {k: statistics.median(v) * 1e3 for k, v in times[n].items()}
        result[n]['train_peak_bytes'] = peak_train_memory(fns[n]['train'], device)
    for n in names:
        r, v = result[n], specs[n]
        base = result['plain']
        for k in ('inference', 'train'):
            r[f'{k}_x'] = r[k] / base[k]
            if v.baseline != 'plain' and v.baseline in result:
                r[f'{k}_x_baseline'] = r[k] / result[v.baseline][k]
        if r['train_peak_bytes'] is not None:
            r['memory_x'] = r['train_peak_bytes'] / base['train_peak_bytes']
        if v.kind is not None:
            moved = attention_bytes(models[n], x, amp)
            ref = result.get(v.baseline, base)
            for k, mode in (('inference', 'inference'), ('train', 'train')):
                floor = passes[v.kind][mode]['total'] * moved / bandwidth * 1e3
                r[f'{k}_floor_ms'] = floor
                r[f'{k}_extra_ms'] = r[k] - ref[k]
                r[f'{k}_x_floor'] = r[f'{k}_extra_ms'] / floor
    return result


def environment(device: torch.device) -> dict:
    env = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        host=platform.node(),
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=str(device),
        backend=kernels.get_backend(),
        mmcv_imported='mmcv' in sys.modules,
    )
    try:
        import timm

        env['timm'] = timm.__version__
    except ImportError:
        env['timm'] = None
    try:
        import triton

        env['triton'] = triton.__version__
    except ImportError:
        env['triton'] = None
    if device.type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(device)
        env['sms'] = torch.cuda.get_device_properties(device).multi_processor_count
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


def _fmt(r: dict, key: str, spec: str = '.3f') -> str:
    return '-' if r.get(key) is None else format(r[key], spec)


def table(res: dict) -> str:
    e = res['environment']
    lines = [
        f'{e.get("gpu", e["device"])}, driver {e.get("driver")}, torch {e["torch"]}, CUDA {e["cuda"]}, '
        f'triton {e["triton"]}, timm {e["timm"]}, backend {e["backend"]}, {e["date"]}; '
        f'input {"x".join(map(str, res["shape"]))}, '
        f'ResNet-50 base width {res["base_width"]}, '
        f'{res["repeats"]} repeats (median); copy bandwidth {res["bandwidth"] / 1e12:.2f} TB/s '
        f'({"measured" if res["bandwidth_measured"] else "assumed"})',
        '',
        '| dtype | variant | inference ms | × | extra ms | floor ms | × floor | train step ms | × | extra ms '
        '| floor ms | × floor | train peak MiB | × |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for dtype, rows in res['results'].items():
        for name, r in rows.items():
            mem = r['train_peak_bytes']
            cells = [dtype, name]
            for k in ('inference', 'train'):
                ratio = _fmt(r, f'{k}_x')
                if f'{k}_x_baseline' in r:
                    ratio += f' ({r[f"{k}_x_baseline"]:.3f})'
                cells += [f'{r[k]:.2f}', ratio, _fmt(r, f'{k}_extra_ms', '.2f'), _fmt(r, f'{k}_floor_ms', '.3g')]
                cells.append(_fmt(r, f'{k}_x_floor', '.2f'))
            cells += ['-' if mem is None else f'{mem / 2**20:.0f}', _fmt(r, 'memory_x')]
            lines.append('| ' + ' | '.join(cells) + ' |')
    lines.append('')
    lines.append("× in parentheses: to the variant's own baseline (plain_compiled, plain_cl).")
    return '\n'.join(lines) + '\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--shape', type=int, nargs=4, default=(2, 3, 800, 1344), metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--dtypes', nargs='+', default=['float32', 'bfloat16'], choices=['float32', 'bfloat16'])
    parser.add_argument('--variants', nargs='+', default=DEFAULT_VARIANTS, help='subset of the variants')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--base-width', type=int, default=64, help='ResNet-50 width (64); smaller for dry runs')
    parser.add_argument('--backend', choices=kernels.BACKENDS, help='backend of the cbam_det variants')
    parser.add_argument('--bandwidth', type=float, default=4.8, help='TB/s where it cannot be measured (H200: 4.8)')
    parser.add_argument('--out-dir', required=True)
    args = parser.parse_args()
    if args.backend:
        kernels.set_backend(args.backend)
    ResNet50.base = args.base_width
    unknown = sorted(set(args.variants) - set(variants()))
    if unknown:
        parser.error(f'--variants: unknown {unknown}; allowed: {", ".join(variants())}')
    specs = variants()
    wanted = ['plain'] + [specs[v].baseline for v in args.variants] + list(args.variants)
    args.variants = list(dict.fromkeys(wanted))
    device = torch.device(args.device)
    passes = census.module_passes(sorted({specs[v].kind for v in args.variants if specs[v].kind}))
    bandwidth = copy_bandwidth(device, args.bandwidth)
    res = dict(
        environment=environment(device),
        shape=list(args.shape),
        base_width=args.base_width,
        repeats=args.repeats,
        bandwidth=bandwidth,
        bandwidth_measured=device.type == 'cuda',
        passes=passes,
        results={},
    )
    for dtype in args.dtypes:
        amp = None if dtype == 'float32' else torch.bfloat16
        res['results'][dtype] = measure(args, device, amp, passes, bandwidth)
        print(f'{dtype}: done', flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'gpu_bench.json'), 'w') as f:
        json.dump(res, f, indent=1)
    text = table(res)
    with open(osp.join(args.out_dir, 'gpu_bench.md'), 'w') as f:
        f.write(text)
    print(text)


if __name__ == '__main__':
    main()
