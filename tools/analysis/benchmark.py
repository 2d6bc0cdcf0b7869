"""Speed and memory of attention against the same network without it.

    python tools/analysis/benchmark.py --backbone r50 --attention cbam --shape 2 3 512 768 --inplace both
    python tools/analysis/benchmark.py --backbone r50 --attention cbam --position after_conv1 --inplace both
    python tools/analysis/benchmark.py --config configs/faster_rcnn/faster-rcnn_r50-cbam_fpn_1x_coco.py \
        --shape 1 3 512 768 --json bench.json
    python tools/analysis/benchmark.py --census --backbone r50 --attention cbam --shape 2 3 800 1344
    python tools/analysis/benchmark.py --census --config configs/yolox/yolox_s-cbam_8xb8-300e_coco.py \
        --shape 8 3 640 640

Variants (each a model built from the same spec with a different attention setting):
``plain`` (no attention), ``attn`` (the attention as configured; ``--inplace both``: ``attn``
with ``inplace=False`` and ``attn_inplace`` with ``inplace=True``), and with ``--reference``
``reference`` (the attention replaced by the plain eager implementation written in
this file, eq. 1-3 of the CBAM paper / SE / BAM eq. 1-4 as one would write them first).
Times: in one process, variants alternate inside every repeat (so machine noise hits
all of them alike; ``--isolate``: each variant in a fresh process per repeat);
inference = eval-mode forward under no_grad, training step = train-mode forward +
backward of the sum of outputs. Reported: median ratio to ``plain`` with min/max over
repeats (each repeat's pair), and the ratio of the median times. Memory of a training
step: CPU = peak RSS growth of a fresh subprocess per variant (model and input built, then Linux's peak-RSS
mark is reset and the step runs); CUDA = ``torch.cuda.max_memory_allocated`` after synchronisation.

Activations are real: the backbone is built with ``zero_init_residual=False`` (mmdet's
default True zeroes every block's last BN, so attention after it would see only zeros; add
``--zero-init-residual`` to measure that case). ``--position after_conv1`` places the plugin
after the block's first ReLU (many ties in the max-pools) instead of the paper's
``after_conv3``. ``--backend`` sets ``CBAM_DET_BACKEND`` for the run.

``--census`` measures nothing in time: it prints what the Triton kernels would cost a GPU
(cbam_det.kernels.census), per kernel and stage, for a training step and an inference of
the same model at ``--shape``: launches, programs and programs per SM (``--sms``, 132: an
H200), registers per thread compiled ahead of time for ``--archs``, and the passes over the
full-size tensors (bytes loaded and stored, counted in Triton's interpreter at
``--census-small-shape``), with the bandwidth floor passes × bytes / ``--bandwidth``. Grids
come from the model run on ``meta`` tensors at full size in ``--census-dtype``; no GPU needed.

``--path attn_resnet`` measures cbam_det's backbone, where CBAM/SE are fused with the
block's last BatchNorm (``fuse_attention=True``); ``--path plugin`` mmdet's ResNet with
``plugins=``. ``--malloc tuned`` re-runs the tool with glibc's malloc told to keep freed
memory (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``): with
the defaults, every large tensor is a fresh ``mmap`` whose pages fault in on first touch,
which makes CPU step times depend on how many tensors a network keeps alive.
"""

import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

import cbam_det  # noqa: E402,F401  (only registration)
from cbam_det.utils.eager import to_reference  # noqa: E402

ATT = {'cbam': dict(type='CBAM'), 'se': dict(type='SE'), 'bam': dict(type='BAM')}
# glibc: serve every allocation from the heap and never give freed memory back to the OS
TUNED_MALLOC = {
    'MALLOC_MMAP_THRESHOLD_': str(2**31),
    'MALLOC_TRIM_THRESHOLD_': str(2**40),
    'MALLOC_TOP_PAD_': str(2**30),
}


# ----------------------------------------------------------------------------- models
def attention_cfg(args, variant: str) -> dict:
    att = dict(ATT[args.attention])
    if variant == 'attn_inplace' or args.inplace == 'true':
        att['inplace'] = True
    elif args.inplace in ('false', 'both'):
        att['inplace'] = False
    return att


def build(args, variant: str) -> nn.Module:
    register_all_modules()
    if args.config:
        from mmengine.config import Config, ConfigDict

        from cbam_det.utils import no_pretrained, strip_attention

        cfg = Config.fromfile(args.config).model.to_dict()
        cfg = no_pretrained(strip_attention(cfg) if variant == 'plain' else cfg)
        model = MODELS.build(ConfigDict(cfg))

        class Dense(nn.Module):  # backbone + neck: deterministic work, no NMS / sampling noise
            def __init__(self, det):
                super().__init__()
                self.det = det

            def forward(self, x):
                return self.det.extract_feat(x)

        model = Dense(model)
    else:
        depth = int(args.backbone.lstrip('r'))
        # a fully training backbone: every BN updates (mmdet's default norm_eval=True would not)
        cfg = dict(
            type='AttnResNet' if args.path == 'attn_resnet' else 'ResNet',
            depth=depth,
            norm_eval=False,
            frozen_stages=-1,
            zero_init_residual=args.zero_init_residual,
        )
        if variant != 'plain':
            att = attention_cfg(args, variant)
            if args.attention == 'bam':
                if args.path != 'attn_resnet':
                    cfg['type'] = 'AttnResNet'
                cfg['bam'] = att
            elif args.path == 'attn_resnet':
                cfg['attention'] = att
            else:
                cfg['plugins'] = [dict(cfg=att, stages=(True,) * 4, position=args.position)]
        model = MODELS.build(cfg)
    if variant == 'reference':
        model = to_reference(model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(args.device)


def outputs_sum(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    return sum(outputs_sum(o) for o in out)


def sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def step_fns(model: nn.Module, x: torch.Tensor, args) -> Dict[str, Callable[[], None]]:
    amp = torch.autocast(
        args.device.split(':')[0],
        dtype=torch.float16 if args.device.startswith('cuda') else torch.bfloat16,
        enabled=args.amp,
    )

    def infer():
        model.eval()
        with torch.no_grad(), amp:
            model(x)

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        with amp:
            loss = outputs_sum(model(x))
        loss.backward()

    return dict(inference=infer, train=train)


def time_variants(args, variants: List[str]) -> Dict[str, Dict[str, List[float]]]:
    torch.manual_seed(0)
    x = torch.randn(*args.shape, device=args.device)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
    models = {v: build(args, v) for v in variants}
    fns = {v: step_fns(models[v], x, args) for v in variants}
    times = {v: {'inference': [], 'train': []} for v in variants}
    for kind in ('inference', 'train'):
        for v in variants:  # warm-up
            fns[v][kind]()
        for r in range(args.repeats):
            for v in variants if r % 2 == 0 else variants[::-1]:  # alternate the order too
                sync(args.device)
                t = time.perf_counter()
                fns[v][kind]()
                sync(args.device)
                times[v][kind].append(time.perf_counter() - t)
    return times


def time_child(args, variant: str) -> Dict[str, List[float]]:
    """Step times of ``variant`` alone in this process: one warm-up, then two steps of each kind."""
    torch.manual_seed(0)
    x = torch.randn(*args.shape, device=args.device)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
    fns = step_fns(build(args, variant), x, args)
    times: Dict[str, List[float]] = {}
    for kind in ('inference', 'train'):
        fns[kind]()
        times[kind] = []
        for _ in range(2):
            sync(args.device)
            t = time.perf_counter()
            fns[kind]()
            sync(args.device)
            times[kind].append(time.perf_counter() - t)
    return times


def time_isolated(args, variants: List[str]) -> Dict[str, Dict[str, List[float]]]:
    """``--isolate``: every repeat runs each variant in a fresh process (alternating order), so
    one variant's memory use cannot change the allocator state the other one sees."""
    child_args = [a for a in sys.argv[1:] if a not in ('--reference', '--isolate')]
    times = {v: {'inference': [], 'train': []} for v in variants}
    for r in range(args.repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:
            proc = subprocess.run(
                [sys.executable, osp.abspath(__file__), *child_args, '--no-memory', '--time-child', v],
                capture_output=True,
                text=True,
                env=dict(os.environ),
            )
            if proc.returncode != 0:
                raise RuntimeError(f'timing run of {v} failed:\n{proc.stderr[-3000:]}')
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            for kind in times[v]:
                times[v][kind].append(statistics.median(res[kind]))
    return times


def memory_child(args, variant: str) -> int:
    """Peak memory growth (bytes) of one training step of ``variant`` (run in its own process)."""
    torch.manual_seed(0)
    x = torch.randn(*args.shape, device=args.device)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
    model = build(args, variant)
    fns = step_fns(model, x, args)
    if args.device.startswith('cuda'):
        fns['train']()  # lazy init outside the measurement
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fns['train']()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # Linux: reset the peak-RSS mark (VmHWM) to the current RSS, run the step, read the new peak
    base = _proc_status_bytes('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    fns['train']()
    return _proc_status_bytes('VmHWM') - base


def _proc_status_bytes(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'{key} not in /proc/self/status (the CPU memory measurement needs Linux)')


def ratio_stats(values: List[float], base: List[float]) -> Dict[str, float]:
    ratios = [v / b for v, b in zip(values, base)]
    return dict(
        median=statistics.median(ratios),
        min=min(ratios),
        max=max(ratios),
        median_s=statistics.median(values),
        ratio_of_medians=statistics.median(values) / statistics.median(base),
    )


# ----------------------------------------------------------------------------- census (no GPU needed)
def _const_key(launch) -> str:
    """A launch's kernel and compile-time constants: launches with equal keys move the same passes."""
    return json.dumps([launch.kernel, [s for s in launch.spec if s[1] == 'const']])


def _census_step(model: nn.Module, x: torch.Tensor, train: bool) -> None:
    model.train(train)
    with torch.set_grad_enabled(train):
        out = outputs_sum(model(x))
        if train:
            out.backward()


def run_census(args) -> dict:
    """Launches, programs per SM, registers and passes of the model's Triton kernels (see above)."""
    from cbam_det import kernels
    from cbam_det.kernels import census, triton_gate

    triton_gate.DEFAULT_SMS = args.sms
    dtype = getattr(torch, args.census_dtype)
    args.device = 'cpu'
    small = build(args, 'attn')
    big = build(args, 'attn').to(device='meta', dtype=dtype)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    recorded, per_key = {'train': [], 'inference': []}, {}
    with kernels.use_backend('triton'):
        for mode, train in (('train', True), ('inference', False)):
            for batch in args.census_batches or [args.shape[0]]:
                x = torch.empty(batch, *args.shape[1:], device='meta', dtype=dtype).contiguous(memory_format=fmt)
                with census.recording(execute=False) as launches:
                    _census_step(big, x, train)
                recorded[mode] += launches
            xs = torch.randn(*args.census_small_shape, generator=torch.Generator().manual_seed(0))
            with census.recording(count=True) as counted:
                _census_step(small.to(memory_format=fmt), xs.contiguous(memory_format=fmt), train)
            for launch in counted:
                per_key.setdefault(_const_key(launch), launch.passes)
    everything = recorded['train'] + recorded['inference']
    if not everything:
        raise SystemExit('census: the model launched no Triton kernel (no CBAM/SE/BAM that the kernels cover?)')
    usage: Dict[str, Dict[int, dict]] = {}
    for r in census.compile_specs(census.unique_specs(everything), archs=args.archs):
        usage.setdefault(json.dumps([r['kernel'], r['spec'], r['warps']]), {})[r['arch']] = r
    rows = []
    for mode, launches in recorded.items():
        groups: Dict[tuple, list] = {}
        for launch in launches:
            groups.setdefault((launch.shape, launch.kernel), []).append(launch)
        for (shape, kernel), group in groups.items():
            first = group[0]
            regs = {a: max(usage[g.key()][a].get('registers', -1) for g in group) for a in args.archs}
            spills = sum(
                usage[g.key()][a].get('stack', 0) + usage[g.key()][a].get('local', 0) for g in group for a in args.archs
            )
            rows.append(
                dict(
                    mode=mode,
                    shape=list(shape) if shape else None,
                    kernel=kernel.strip('_').replace('_kernel', ''),
                    launches=len(group),
                    programs=min(g.programs for g in group),
                    per_sm=min(g.programs for g in group) / args.sms,
                    warps=first.warps,
                    registers=regs,
                    spills=spills,
                    passes=per_key.get(_const_key(first)),
                    bytes=first.full_elements or 0,
                )
            )
    full = [r for r in rows if r['shape']]
    summary = dict(
        min_programs_per_sm=min(r['per_sm'] for r in full),
        max_registers={a: max(r['registers'][a] for r in rows) for a in args.archs},
        spills=sum(r['spills'] for r in rows),
    )
    floors = summary['floors'] = {}  # per step and batch size: full-size bytes the kernels move
    for r in full:
        f = floors.setdefault(r['mode'], {}).setdefault(r['shape'][0], dict(bytes=0, unmeasured=0))
        f['bytes'] += (r['passes'] or 0) * r['bytes'] * r['launches']
        f['unmeasured'] += r['passes'] is None
    for per_batch in floors.values():
        for f in per_batch.values():
            f['floor_ms'] = f['bytes'] / (args.bandwidth * 1e12) * 1e3
    return dict(rows=rows, summary=summary)


def census_stages(res: dict) -> List[dict]:
    """Per step and stage (full-size shape): modules, the fewest programs per SM, the most
    registers, and the passes of one module (Σ passes of its launches / modules)."""
    out: Dict[tuple, dict] = {}
    for r in res['rows']:
        if not r['shape']:
            continue
        key = (r['mode'], tuple(r['shape']))
        s = out.setdefault(key, dict(mode=r['mode'], shape=r['shape'], modules=0, per_sm=1e9, registers=0, passes=0.0))
        if r['kernel'] in ('apply_gates', 'bam_apply'):
            s['modules'] += r['launches']
        s['per_sm'] = min(s['per_sm'], r['per_sm'])
        s['registers'] = max(s['registers'], *r['registers'].values())
        s['passes'] += (r['passes'] if r['passes'] is not None else float('nan')) * r['launches']
    for s in out.values():
        s['passes'] /= max(s['modules'], 1)
    return list(out.values())


def print_census(args, res: dict) -> None:
    spec = args.config or f'{args.backbone} {args.attention} ({args.path}, {args.position})'
    print(
        f'census: {spec}, input {"x".join(map(str, args.shape))} {args.census_dtype}'
        f'{", channels_last" if args.channels_last else ""}; {args.sms} SMs; registers for '
        + ', '.join(f'sm_{a}' for a in args.archs)
        + f'; passes counted at {"x".join(map(str, args.census_small_shape))}'
    )
    if args.census_per_kernel:
        print('| step | stage (N×C×H×W) | kernel | launches | programs | per SM | warps | registers | passes |')
        print('|---|---|---|---:|---:|---:|---:|---:|---:|')
    for r in res['rows'] if args.census_per_kernel else []:
        shape = '×'.join(map(str, r['shape'])) if r['shape'] else '(small)'
        regs = '/'.join('-' if v < 0 else str(v) for v in r['registers'].values())
        passes = '?' if r['passes'] is None else f'{r["passes"]:g}'
        print(
            f'| {r["mode"]} | {shape} | {r["kernel"]} | {r["launches"]} | {r["programs"]} | {r["per_sm"]:.1f} | '
            f'{r["warps"]} | {regs} | {passes} |'
        )
    print()
    print('| step | stage (N×C×H×W) | modules | fewest programs per SM | most registers | passes per module |')
    print('|---|---|---:|---:|---:|---:|')
    for st in census_stages(res):
        print(
            f'| {st["mode"]} | {"×".join(map(str, st["shape"]))} | {st["modules"]} | {st["per_sm"]:.1f} | '
            f'{st["registers"]} | {st["passes"]:g} |'
        )
    s = res['summary']
    print(
        f'full-size launches: at least {s["min_programs_per_sm"]:.2f} programs per SM; registers at most '
        + ', '.join(f'{v} (sm_{a})' for a, v in s['max_registers'].items())
        + f'; spills {s["spills"]}'
    )
    for mode, per_batch in s['floors'].items():
        for batch, f in sorted(per_batch.items()):
            print(
                f'{mode}, batch {batch}: the kernels move {f["bytes"] / 1e9:.3f} GB of full-size tensors: floor '
                f'{f["floor_ms"]:.3f} ms at {args.bandwidth} TB/s'
                + (f' ({f["unmeasured"]} kernels without counted passes)' if f['unmeasured'] else '')
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group()
    src.add_argument('--backbone', default='r50', help='r18/r34/r50/r101/r152 (with --attention)')
    src.add_argument('--config', help='a detector config: its backbone + neck is measured with/without attention')
    parser.add_argument(
        '--attention',
        choices=sorted(ATT),
        default='cbam',
        help='with --backbone: CBAM/SE in every block, BAM after stages 1-3',
    )
    parser.add_argument(
        '--path',
        choices=['plugin', 'attn_resnet'],
        default='plugin',
        help="with --backbone: mmdet's ResNet with plugins=, or cbam_det's AttnResNet",
    )
    parser.add_argument(
        '--inplace',
        choices=['default', 'true', 'false', 'both'],
        default='default',
        help="the attention's inplace (default: the module's; in mmdet's ResNet and AttnResNet that is True); "
        'both: time inplace=False (attn) and inplace=True (attn_inplace)',
    )
    parser.add_argument(
        '--position',
        choices=['after_conv3', 'after_conv1'],
        default='after_conv3',
        help='plugin position: after the last BN (paper) or after the first ReLU',
    )
    parser.add_argument(
        '--zero-init-residual', action='store_true', help="mmdet's zero init of each block's last BN (see above)"
    )
    parser.add_argument('--backend', choices=['auto', 'torch', 'cpu', 'triton'], help='CBAM_DET_BACKEND for the run')
    parser.add_argument(
        '--malloc',
        choices=['default', 'tuned'],
        default='default',
        help='glibc malloc settings for the whole run (see above)',
    )
    parser.add_argument('--shape', type=int, nargs=4, default=(2, 3, 512, 768), metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--reference', action='store_true', help='also time the plain eager reference')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory subprocesses')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true', help='autocast: fp16 on CUDA, bf16 on CPU')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    parser.add_argument('--json', help='write the results here too')
    parser.add_argument(
        '--isolate',
        action='store_true',
        help='time every variant in its own fresh process per repeat (see time_isolated)',
    )
    parser.add_argument('--census', action='store_true', help="the Triton kernels' launch census (see above)")
    parser.add_argument('--census-dtype', choices=['float32', 'bfloat16', 'float16'], default='bfloat16')
    parser.add_argument('--census-small-shape', type=int, nargs=4, default=(1, 3, 64, 64), metavar=('N', 'C', 'H', 'W'))
    parser.add_argument(
        '--census-batches', type=int, nargs='+', help='census: these batch sizes (default: N of --shape)'
    )
    parser.add_argument('--census-per-kernel', action='store_true', help='census: also the table per kernel')
    parser.add_argument('--sms', type=int, default=132, help='streaming multiprocessors (132: H200)')
    parser.add_argument('--archs', type=int, nargs='+', default=[90], help='compile targets, e.g. 80 90 100 120')
    parser.add_argument('--bandwidth', type=float, default=4.8, help='memory bandwidth in TB/s (4.8: H200)')
    parser.add_argument('--memory-child', help=argparse.SUPPRESS)
    parser.add_argument('--time-child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.malloc == 'tuned' and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.execve(
            sys.executable, [sys.executable, osp.abspath(__file__), *sys.argv[1:]], dict(os.environ, **TUNED_MALLOC)
        )  # glibc reads these at start-up only
    if args.census and os.environ.get('TRITON_INTERPRET') != '1':  # read when triton is imported
        os.execve(
            sys.executable,
            [sys.executable, osp.abspath(__file__), *sys.argv[1:]],
            dict(os.environ, TRITON_INTERPRET='1'),
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.census:
        res = run_census(args)
        print_census(args, res)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(
                    dict(args={k: v for k, v in vars(args).items() if not k.endswith('child')}, **res), f, indent=1
                )
        return
    if args.backend:
        os.environ['CBAM_DET_BACKEND'] = args.backend  # read at every call; children inherit it
    if args.memory_child:
        print(json.dumps({'bytes': memory_child(args, args.memory_child)}))
        return
    if args.time_child:
        print(json.dumps(time_child(args, args.time_child)))
        return

    variants = ['plain', 'attn'] + (['attn_inplace'] if args.inplace == 'both' else [])
    variants += ['reference'] if args.reference else []
    times = (time_isolated if args.isolate else time_variants)(args, variants)
    spec = args.config or (
        f'{args.backbone} {args.attention} inplace={args.inplace} ({args.path}, {args.position}, '
        f'zero_init_residual={args.zero_init_residual}, backend={os.environ.get("CBAM_DET_BACKEND", "auto")})'
    )
    result = dict(
        spec=spec,
        shape=list(args.shape),
        malloc=args.malloc,
        isolate=args.isolate,
        device=args.device,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        amp=args.amp,
        channels_last=args.channels_last,
        repeats=args.repeats,
        variants={},
    )
    for v in variants:
        result['variants'][v] = {k: ratio_stats(times[v][k], times['plain'][k]) for k in ('inference', 'train')}
    if not args.no_memory:
        child_args = [a for a in sys.argv[1:] if a != '--reference']
        for v in variants:
            proc = subprocess.run(
                [sys.executable, osp.abspath(__file__), *child_args, '--memory-child', v],
                capture_output=True,
                text=True,
                env=dict(os.environ),
            )
            if proc.returncode != 0:
                raise RuntimeError(f'memory run of {v} failed:\n{proc.stderr[-3000:]}')
            result['variants'][v]['train_memory_bytes'] = json.loads(proc.stdout.strip().splitlines()[-1])['bytes']
        base = result['variants']['plain']['train_memory_bytes']
        for v in variants:
            result['variants'][v]['train_memory_ratio'] = result['variants'][v]['train_memory_bytes'] / base

    print(
        f'{result["spec"]}  input {"x".join(map(str, args.shape))}  {args.device}, {result["threads"]} threads, '
        f'torch {torch.__version__}{", amp" if args.amp else ""}{", channels_last" if args.channels_last else ""}, '
        f'malloc {args.malloc}{", isolated processes" if args.isolate else ""}'
    )
    print(f'{"variant":10s} {"inference ×":>24s} {"train step ×":>24s} {"train memory":>22s}')
    for v, r in result['variants'].items():
        inf, tr = r['inference'], r['train']
        mem = (
            f'{r["train_memory_bytes"] / 2**20:8.0f} MiB {r["train_memory_ratio"]:5.2f}×'
            if 'train_memory_bytes' in r
            else ''
        )
        print(
            f'{v:10s} {inf["median"]:6.3f} [{inf["min"]:.3f}, {inf["max"]:.3f}] {inf["median_s"]:5.3f}s '
            f'{tr["median"]:6.3f} [{tr["min"]:.3f}, {tr["max"]:.3f}] {tr["median_s"]:5.3f}s {mem:>22s}   '
            f'(ratio of medians {inf["ratio_of_medians"]:.3f} / {tr["ratio_of_medians"]:.3f})'
        )
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
