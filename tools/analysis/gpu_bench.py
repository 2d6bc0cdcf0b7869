"""Cost of attention in a ResNet-50 on one device, each figure a ratio to the plain network
measured in the same run (CBAM paper Fig. 3 placement; BAM paper: after stages 1-3), beside
its bandwidth floor.

    CBAM_DET_LAYERS_ONLY=1 python tools/analysis/gpu_bench.py --out-dir work_dirs/gpu_check
    CBAM_DET_LAYERS_ONLY=1 python tools/analysis/gpu_bench.py --variants plain_compiled cbam_compiled \\
        cbam_eager_compiled --dtypes bfloat16 --out-dir work_dirs/gpu_check/compiled
    python tools/analysis/gpu_bench.py --device cpu --shape 1 3 64 96 --repeats 1 --out-dir /tmp/dry

Variants (same ResNet-50, torchvision/mmdet "pytorch" style, ``zero_init_residual`` off so
the attention sees real activations): ``plain``; ``cbam_eager`` (the obvious eager CBAM with
our weights, eager_reference.py); ``cbam_timm`` (timm's ``CbamModule``, when timm is
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
module's input (passes counted by census.py in Triton's interpreter: CBAM 10 per
training step and 4 per inference, SE 7 and 3, BAM 5 and 2) over the device's copy bandwidth
(measured on CUDA; ``--bandwidth`` TB/s elsewhere). ``extra`` is the variant's time minus the
plain network's; ``× floor`` is extra / floor. Writes ``gpu_bench.json`` and ``gpu_bench.md``.
Needs torch and cbam_det's layers only; the measuring is toolkit.py's.
"""

import argparse
import statistics
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torch.nn as nn
from census import load_counted_passes, module_passes
from eager_reference import EagerCBAM
from toolkit import (
    DEFAULT_BANDWIDTH_TBS,
    ResNet50,
    copy_bandwidth,
    environment,
    floor_ms,
    peak_step_bytes,
    step_fns,
    time_alternating,
    write_results,
)

from cbam_det import BAM, CBAM, SE, kernels


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


def variants(width: int = 64) -> Dict[str, Variant]:
    """The variants of a ResNet-50 of base ``width`` (64; smaller for dry runs)."""

    def net(att=None, fuse=False, bam=None):
        return lambda: ResNet50(att, fuse, bam, width=width)

    plugin = net(lambda c: CBAM(c, inplace=True))
    eager = net(lambda c: EagerCBAM(CBAM(c)))
    out = {
        'plain': Variant(net()),
        'cbam_eager': Variant(eager, kind='cbam_plugin'),
        'cbam_plugin': Variant(plugin, kind='cbam_plugin'),
        'cbam_fused': Variant(net(lambda c: CBAM(c, inplace=True), fuse=True), kind='cbam_fused'),
        'cbam_torch': Variant(plugin, 'torch', kind='cbam_plugin'),
        'se_plugin': Variant(net(lambda c: SE(c, inplace=True)), kind='se_plugin'),
        'bam3': Variant(net(bam=lambda c: BAM(c, inplace=True)), kind='bam'),
        'plain_cl': Variant(net(), channels_last=True, baseline='plain_cl'),
        'cbam_plugin_cl': Variant(plugin, channels_last=True, kind='cbam_plugin', baseline='plain_cl'),
        'plain_compiled': Variant(net(), compiled=True, baseline='plain_compiled'),
        'cbam_compiled': Variant(plugin, compiled=True, kind='cbam_plugin', baseline='plain_compiled'),
        'cbam_eager_compiled': Variant(eager, compiled=True, kind='cbam_plugin', baseline='plain_compiled'),
    }
    timm = timm_cbam()
    if timm is not None:
        out['cbam_timm'] = Variant(net(timm), kind='cbam_plugin')
    return out


DEFAULT_VARIANTS = [n for n, v in variants().items() if not v.compiled]
MODES = ('inference', 'train')


# ----------------------------------------------------------------------------- measuring
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


def measure(args, device: torch.device, amp: Optional[torch.dtype], passes: dict, bandwidth: float) -> Dict[str, dict]:
    torch.manual_seed(0)
    x = torch.randn(*args.shape, device=device)
    specs = {k: v for k, v in variants(args.base_width).items() if k in args.variants}
    models, fns = {}, {}
    for name, v in specs.items():
        torch.manual_seed(0)
        model = v.make().to(device)
        xin = x
        if v.channels_last:
            model, xin = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        models[name] = model
        run = torch.compile(model) if v.compiled else model
        fns[name] = step_fns(model, xin, amp=amp, backend=v.backend, run=run)
    times = time_alternating(fns, device, args.repeats, args.warmup, kinds=args.modes)
    names = list(specs)
    result = {}
    for n in names:
        result[n] = {k: statistics.median(times[n][k]) * 1e3 if k in times[n] else None for k in MODES}
        # CUDA only: a CPU's resident-set peak means little after the other variants ran here
        cuda_train = device.type == 'cuda' and 'train' in args.modes
        result[n]['train_peak_bytes'] = peak_step_bytes(fns[n]['train'], device) if cuda_train else None
    for n in names:
        r, v = result[n], specs[n]
        base = result['plain']
        for k in args.modes:
            r[f'{k}_x'] = r[k] / base[k]
            if v.baseline != 'plain' and v.baseline in result:
                r[f'{k}_x_baseline'] = r[k] / result[v.baseline][k]
        if r['train_peak_bytes'] is not None:
            r['memory_x'] = r['train_peak_bytes'] / base['train_peak_bytes']
        if v.kind is not None:
            moved = attention_bytes(models[n], x, amp)
            ref = result.get(v.baseline, base)
            for k in args.modes:
                floor = floor_ms(passes[v.kind][k]['total'], moved, bandwidth)
                r[f'{k}_floor_ms'] = floor
                r[f'{k}_extra_ms'] = r[k] - ref[k]
                r[f'{k}_x_floor'] = r[f'{k}_extra_ms'] / floor
    return result


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
                cells += [_fmt(r, k, '.2f'), ratio, _fmt(r, f'{k}_extra_ms', '.2f'), _fmt(r, f'{k}_floor_ms', '.3g')]
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
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES, help='what is timed')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--base-width', type=int, default=64, help='ResNet-50 width (64); smaller for dry runs')
    parser.add_argument('--backend', choices=kernels.BACKENDS, help='backend of the cbam_det variants')
    parser.add_argument(
        '--bandwidth', type=float, default=DEFAULT_BANDWIDTH_TBS, help='TB/s where it cannot be measured (an H200: 4.8)'
    )
    parser.add_argument(
        '--passes', help="census.py --counted-passes's file (default: counted here, in Triton's interpreter)"
    )
    parser.add_argument('--out-dir', required=True)
    args = parser.parse_args()
    if args.backend:
        kernels.set_backend(args.backend)
    unknown = sorted(set(args.variants) - set(variants()))
    if unknown:
        parser.error(f'--variants: unknown {unknown}; allowed: {", ".join(variants())}')
    specs = variants()
    wanted = ['plain'] + [specs[v].baseline for v in args.variants] + list(args.variants)
    args.variants = list(dict.fromkeys(wanted))
    device = torch.device(args.device)
    kinds = sorted({specs[v].kind for v in args.variants if specs[v].kind})
    counted = load_counted_passes(args.passes)
    passes = {k: counted['module'][k] for k in kinds} if counted else module_passes(kinds)
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
    text = table(res)
    write_results(args.out_dir, 'gpu_bench', res, text)
    print(text)


if __name__ == '__main__':
    main()
