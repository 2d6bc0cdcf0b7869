"""Cost of attention in a ResNet-50 on one device, each figure a ratio to the plain network
measured in the same run (CBAM paper Fig. 3 placement; BAM paper: after stages 1-3).

    CBAM_DET_LAYERS_ONLY=1 python tools/analysis/gpu_bench.py --out-dir work_dirs/gpu_check
    python tools/analysis/gpu_bench.py --device cpu --shape 1 3 64 96 --repeats 1 --out-dir /tmp/dry

Variants (same ResNet-50, torchvision/mmdet "pytorch" style, ``zero_init_residual`` off so
the attention sees real activations): ``plain``; ``cbam_eager`` (the obvious eager CBAM with
our weights: adaptive pools, two MLP calls, cat, 7×7 conv, out-of-place products);
``cbam_timm`` (timm's ``CbamModule``, when timm is installed); ``cbam_plugin`` (ours after
each block's last BN, ``inplace=True`` as mmdet's ResNet builds it); ``cbam_fused`` (ours
with the last BN folded in, AttnResNet's ``fuse_attention``); ``cbam_torch`` (the plugin on
the ``torch`` backend); ``se_plugin``; ``bam3``. CBAM and SE sit in all 16 blocks.

Per dtype (float32, and bfloat16 autocast): inference (eval, no_grad) and a training step
(forward + backward of the outputs' sum) in milliseconds, medians over ``--repeats`` with
the variants alternating inside every repeat; peak memory of a training step from
``torch.cuda.max_memory_allocated`` (CPU: not measured). Writes ``gpu_bench.json`` and
``gpu_bench.md`` (a table) to ``--out-dir``. Needs torch and cbam_det's layers only.
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
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from cbam_det import BAM, CBAM, SE, kernels  # noqa: E402


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


class EagerCBAM(nn.Module):
    """The obvious eager CBAM, with the weights of one of ours."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.m = CBAM(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cg, sg = self.m.channel_gate, self.m.spatial_gate
        mlp = lambda v: cg.fc2(F.relu(cg.fc1(v.flatten(1))))  # noqa: E731
        mc = torch.sigmoid(mlp(F.adaptive_avg_pool2d(x, 1)) + mlp(F.adaptive_max_pool2d(x, 1)))
        x = x * mc[:, :, None, None].to(x.dtype)
        desc = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], 1)
        return x * torch.sigmoid(sg.bn(sg.conv(desc))).to(x.dtype)


def timm_cbam() -> Optional[Callable[[int], nn.Module]]:
    try:
        from timm.layers.cbam import CbamModule
    except ImportError:  # no timm: the variant is left out (the JSON records timm=None)
        return None
    return lambda c: CbamModule(c)


def variants() -> Dict[str, tuple]:
    """name → (model factory, backend: None = the run's (``--backend``, else CBAM_DET_BACKEND))."""
    out = {
        'plain': (lambda: ResNet50(), None),
        'cbam_eager': (lambda: ResNet50(EagerCBAM), None),
        'cbam_plugin': (lambda: ResNet50(lambda c: CBAM(c, inplace=True)), None),
        'cbam_fused': (lambda: ResNet50(lambda c: CBAM(c, inplace=True), fuse=True), None),
        'cbam_torch': (lambda: ResNet50(lambda c: CBAM(c, inplace=True)), 'torch'),
        'se_plugin': (lambda: ResNet50(lambda c: SE(c, inplace=True)), None),
        'bam3': (lambda: ResNet50(bam=lambda c: BAM(c, inplace=True)), None),
    }
    timm = timm_cbam()
    if timm is not None:
        out['cbam_timm'] = (lambda: ResNet50(timm), None)
    return out


# ----------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def step_fns(model: nn.Module, x: torch.Tensor, amp: Optional[torch.dtype], backend: Optional[str]):
    ctx = lambda: torch.autocast(x.device.type, dtype=amp, enabled=amp is not None)  # noqa: E731
    chosen = lambda: kernels.use_backend(backend) if backend else contextlib.nullcontext()  # noqa: E731

    def infer():
        model.eval()
        with torch.no_grad(), ctx(), chosen():
            model(x)

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        with ctx(), chosen():
            loss = sum(o.float().sum() for o in model(x))
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


def measure(args, device: torch.device, amp: Optional[torch.dtype]) -> Dict[str, dict]:
    torch.manual_seed(0)
    x = torch.randn(*args.shape, device=device)
    specs = {k: v for k, v in variants().items() if k in args.variants}
    models = {}
    for name, (make, _) in specs.items():
        torch.manual_seed(0)
        models[name] = make().to(device)
    fns = {name: step_fns(models[name], x, amp, backend) for name, (_, backend) in specs.items()}
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
    base = result['plain']
    for n in names:
        r = result[n]
        r['inference_x'] = r['inference'] / base['inference']
        r['train_x'] = r['train'] / base['train']
        if r['train_peak_bytes'] is not None:
            r['memory_x'] = r['train_peak_bytes'] / base['train_peak_bytes']
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


def table(res: dict) -> str:
    e = res['environment']
    lines = [
        f'{e.get("gpu", e["device"])}, driver {e.get("driver")}, torch {e["torch"]}, CUDA {e["cuda"]}, '
        f'triton {e["triton"]}, timm {e["timm"]}, backend {e["backend"]}, {e["date"]}; '
        f'input {"x".join(map(str, res["shape"]))}, '
        f'ResNet-50 base width {res["base_width"]}, '
        f'{res["repeats"]} repeats (median)',
        '',
        '| dtype | variant | inference ms | × | train step ms | × | train peak MiB | × |',
        '|---|---|---:|---:|---:|---:|---:|---:|',
    ]
    for dtype, rows in res['results'].items():
        for name, r in rows.items():
            mem = r['train_peak_bytes']
            lines.append(
                f'| {dtype} | {name} | {r["inference"]:.2f} | {r["inference_x"]:.3f} | {r["train"]:.2f} | '
                f'{r["train_x"]:.3f} | {"-" if mem is None else f"{mem / 2**20:.0f}"} | '
                f'{"-" if mem is None else format(r["memory_x"], ".3f")} |'
            )
    return '\n'.join(lines) + '\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--shape', type=int, nargs=4, default=(2, 3, 800, 1344), metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--dtypes', nargs='+', default=['float32', 'bfloat16'], choices=['float32', 'bfloat16'])
    parser.add_argument('--variants', nargs='+', default=list(variants()), help='subset of the variants')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--base-width', type=int, default=64, help='ResNet-50 width (64); smaller for dry runs')
    parser.add_argument('--backend', choices=kernels.BACKENDS, help='backend of the cbam_det variants')
    parser.add_argument('--out-dir', required=True)
    args = parser.parse_args()
    if args.backend:
        kernels.set_backend(args.backend)
    ResNet50.base = args.base_width
    unknown = sorted(set(args.variants) - set(variants()))
    if unknown:
        parser.error(f'--variants: unknown {unknown}; allowed: {", ".join(variants())}')
    if 'plain' not in args.variants:
        args.variants = ['plain'] + args.variants
    device = torch.device(args.device)
    res = dict(
        environment=environment(device),
        shape=list(args.shape),
        base_width=args.base_width,
        repeats=args.repeats,
        results={},
    )
    for dtype in args.dtypes:
        amp = None if dtype == 'float32' else torch.bfloat16
        res['results'][dtype] = measure(args, device, amp)
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
