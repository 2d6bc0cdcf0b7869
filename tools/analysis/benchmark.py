"""Speed and memory of attention against the same network without it.

    python tools/analysis/benchmark.py --backbone r50 --attention cbam --shape 2 3 512 768 --inplace both
    python tools/analysis/benchmark.py --backbone r50 --attention cbam --position after_conv1 --inplace both
    python tools/analysis/benchmark.py --config configs/faster_rcnn/faster-rcnn_r50-cbam_fpn_1x_coco.py \
        --shape 1 3 512 768 --json bench.json

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
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

import cbam_det  # noqa: E402,F401  (only registration)
from cbam_det import BAM, CBAM, SE  # noqa: E402

ATT = {'cbam': dict(type='CBAM'), 'se': dict(type='SE'), 'bam': dict(type='BAM')}
# glibc: serve every allocation from the heap and never give freed memory back to the OS
TUNED_MALLOC = {
    'MALLOC_MMAP_THRESHOLD_': str(2**31),
    'MALLOC_TRIM_THRESHOLD_': str(2**40),
    'MALLOC_TOP_PAD_': str(2**30),
}


# ----------------------------------------------------------------------------- eager references
class _Eager(nn.Module):
    """Wraps a cbam_det module ``m`` and recomputes it the obvious eager way with its weights."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m


class EagerCBAM(_Eager):
    """The obvious eager CBAM: adaptive pools, two MLP calls, cat, 7×7 conv, out-of-place products."""

    def forward(self, x):
        cg, sg = self.m.channel_gate, self.m.spatial_gate
        mlp = lambda v: cg.fc2(F.relu(cg.fc1(v.flatten(1))))  # noqa: E731
        mc = torch.sigmoid(mlp(F.adaptive_avg_pool2d(x, 1)) + mlp(F.adaptive_max_pool2d(x, 1)))
        x = x * mc[:, :, None, None]
        desc = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], 1)
        return x * torch.sigmoid(sg.bn(sg.conv(desc)))


class EagerSE(_Eager):
    def forward(self, x):
        cg = self.m.channel_gate
        return x * torch.sigmoid(cg.fc2(F.relu(cg.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1)))))[:, :, None, None]


class EagerBAM(_Eager):
    def forward(self, x):
        ca, sa = self.m.channel_att, self.m.spatial_att
        c = ca.fc2(F.relu(ca.bn(ca.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1)))))[:, :, None, None]
        s = F.relu(sa.reduce_bn(sa.reduce(x)))
        for conv, bn in zip(sa.dilated, sa.dilated_bn):
            s = F.relu(bn(conv(s)))
        s = sa.final(s)
        return x + x * torch.sigmoid(c.expand_as(x) + s.expand_as(x))


def to_reference(model: nn.Module) -> nn.Module:
    """Replace every CBAM/SE/BAM in ``model`` by its eager reference (same weights)."""
    for name, child in model.named_children():
        if isinstance(child, CBAM) and child.arrangement == 'channel_first' and child.spatial_gate is not None:
            setattr(model, name, EagerCBAM(child))
        elif isinstance(child, SE):
            setattr(model, name, EagerSE(child))
        elif isinstance(child, BAM) and child.combine == 'sum' and child.residual:
            setattr(model, name, EagerBAM(child))
        else:
            to_reference(child)
    return model


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
    parser.add_argument('--memory-child', help=argparse.SUPPRESS)
    parser.add_argument('--time-child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.malloc == 'tuned' and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.execve(
            sys.executable, [sys.executable, osp.abspath(__file__), *sys.argv[1:]], dict(os.environ, **TUNED_MALLOC)
        )  # glibc reads these at start-up only
    if args.threads:
        torch.set_num_threads(args.threads)
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
