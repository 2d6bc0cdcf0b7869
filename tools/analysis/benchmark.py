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

What the Triton kernels of the same model would cost a GPU is measured without one by
``census.py`` (same model options). The measuring itself (step functions, alternating
timing, peak memory, the models) is ``toolkit.py``.

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
from typing import Dict, List

import torch
import torch.nn as nn
from toolkit import mmdet_model, peak_step_bytes, step_fns, time_alternating  # (puts the repository on sys.path)

# glibc: serve every allocation from the heap and never give freed memory back to the OS
TUNED_MALLOC = {
    'MALLOC_MMAP_THRESHOLD_': str(2**31),
    'MALLOC_TRIM_THRESHOLD_': str(2**40),
    'MALLOC_TOP_PAD_': str(2**30),
}


def model_options(parser: argparse.ArgumentParser) -> None:
    """The options that say which model is measured (shared with census.py)."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument('--backbone', default='r50', help='r18/r34/r50/r101/r152 (with --attention)')
    src.add_argument('--config', help='a detector config: its backbone + neck is measured with/without attention')
    choices = {  # option: (allowed values, the first is the default), what it sets
        '--attention': (['cbam', 'se', 'bam'], 'with --backbone: CBAM/SE in every block, BAM after stages 1-3'),
        '--path': (
            ['plugin', 'attn_resnet'],
            "with --backbone: mmdet's ResNet with plugins=, or cbam_det's AttnResNet",
        ),
        '--inplace': (
            ['default', 'true', 'false', 'both'],
            "the attention's inplace (default: the module's; in mmdet's ResNet and AttnResNet that is True); "
            'both: time inplace=False (attn) and inplace=True (attn_inplace)',
        ),
        '--position': (
            ['after_conv3', 'after_conv1'],
            'plugin position: after the last BN (paper) or after the first ReLU',
        ),
    }
    for flag, (allowed, what) in choices.items():
        parser.add_argument(flag, choices=allowed, default=allowed[0], help=what)
    parser.add_argument(
        '--zero-init-residual', action='store_true', help="mmdet's zero init of each block's last BN (see above)"
    )
    parser.add_argument('--shape', type=int, nargs=4, default=(2, 3, 512, 768), metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--channels-last', action='store_true')


def build(args, variant: str) -> nn.Module:
    """The model of ``variant`` (toolkit.mmdet_model) from the parsed model options."""
    model = mmdet_model(
        variant,
        backbone=args.backbone,
        config=args.config,
        attention=args.attention,
        path=args.path,
        position=args.position,
        inplace=args.inplace,
        zero_init_residual=args.zero_init_residual,
    )
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(args.device)


def _input(args) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(*args.shape, device=args.device)
    return x.to(memory_format=torch.channels_last) if args.channels_last else x


def _steps(args, variant: str):
    amp = (torch.float16 if args.device.startswith('cuda') else torch.bfloat16) if args.amp else None
    return step_fns(build(args, variant), _input(args), amp=amp)


def time_variants(args, variants: List[str]) -> Dict[str, Dict[str, List[float]]]:
    x = _input(args)
    amp = (torch.float16 if args.device.startswith('cuda') else torch.bfloat16) if args.amp else None
    fns = {v: step_fns(build(args, v), x, amp=amp) for v in variants}
    return time_alternating(fns, args.device, args.repeats)


def time_child(args, variant: str) -> Dict[str, List[float]]:
    """Step times of ``variant`` alone in this process: one warm-up, then two steps of each kind."""
    return time_alternating({variant: _steps(args, variant)}, args.device, repeats=2)[variant]


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
    fns = _steps(args, variant)
    if args.device.startswith('cuda'):
        fns['train']()  # lazy init outside the measurement
    return peak_step_bytes(fns['train'], args.device)


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
    model_options(parser)
    parser.add_argument('--backend', choices=['auto', 'torch', 'cpu', 'triton'], help='CBAM_DET_BACKEND for the run')
    parser.add_argument(
        '--malloc',
        choices=['default', 'tuned'],
        default='default',
        help='glibc malloc settings for the whole run (see above)',
    )
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--reference', action='store_true', help='also time the plain eager reference')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory subprocesses')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true', help='autocast: fp16 on CUDA, bf16 on CPU')
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
