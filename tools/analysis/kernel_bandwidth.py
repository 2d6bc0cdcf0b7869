"""Achieved memory bandwidth of every Triton kernel of an attention module's step (CBAM, Woo et
al. ECCV 2018; SE; BAM, Park et al. BMVC 2018) on a CUDA device, against the copy bandwidth
measured in the same process.

    CBAM_DET_LAYERS_ONLY=1 python tools/analysis/kernel_bandwidth.py --out-dir work_dirs/gpu_check
    CBAM_DET_LAYERS_ONLY=1 python tools/analysis/kernel_bandwidth.py --device cpu --shapes 1 24 5 9 --out-dir /tmp/kb

Each module step (:func:`census.module_step`: forward, and backward in training, on the
``triton`` backend) runs once at ResNet-50's stage-1 and stage-4 block outputs of a Faster
R-CNN batch (2×256×200×336, 2×2048×25×42), in bf16 NCHW and channels-last and float32 NCHW;
every launch is recorded and then replayed alone:

- bytes: the kernel's full-size passes, counted access by access in Triton's interpreter
  (:func:`census.kernel_passes`), × the bytes of the full-size tensor, plus its other tensor
  operands (partial sums, gates, pooled maps) once each;
- time: ``triton.testing.do_bench`` of the launch (median; launch overhead included, as a
  training step pays it) and ``do_bench_cudagraph`` (the kernel alone, replayed from a CUDA
  graph);
- GB/s and its fraction of the copy bandwidth (:func:`toolkit.copy_bandwidth`).

On a CPU (``--device cpu``, in Triton's interpreter) the same walk runs as a dry run: every
launch is recorded and replayed once, and nothing is timed. Writes ``kernel_bandwidth.json``
and ``kernel_bandwidth.md``.
"""

import argparse
import itertools
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from census import (
    KINDS,
    PASS_LAYOUTS,
    _describe,
    _layout_name,
    kernel_key,
    kernel_passes,
    load_counted_passes,
    module_step,
)
from toolkit import DEFAULT_BANDWIDTH_TBS, copy_bandwidth, environment, write_results

from cbam_det.kernels import launch as T

__all__ = ['STAGE_SHAPES', 'LAYOUTS', 'step_launches', 'measure']

#: ResNet-50's stage-1 and stage-4 block outputs in a Faster R-CNN step (batch 2, 800×1344)
STAGE_SHAPES = {'stage1': (2, 256, 200, 336), 'stage4': (2, 2048, 25, 42)}
#: (dtype, channels-last) pairs measured
LAYOUTS = PASS_LAYOUTS


def step_launches(kind: str, x: torch.Tensor, train: bool) -> List[dict]:
    """Every launch of one module step of ``kind`` on ``x``: run once, kept with its replay."""
    seen: List[dict] = []

    def hook(kernel, grid, args, meta, warps, run) -> None:
        run()
        launch = _describe(kernel, grid, args, meta, warps)
        others = [a for a in args if isinstance(a, torch.Tensor) and a.dim() != 4]
        small = {a.data_ptr(): a.numel() * a.element_size() for a in others}  # each buffer once
        seen.append(dict(launch=launch, run=run, small_bytes=sum(small.values())))

    with T.observe(hook):
        module_step(kind, x, train)
    return seen


def _timed(run, device: torch.device) -> Dict[str, float]:
    if device.type != 'cuda':
        run()  # the dry run: replayable, not timed
        return dict(ms=float('nan'), graph_ms=float('nan'))
    from triton.testing import do_bench, do_bench_cudagraph

    return dict(
        ms=do_bench(run, warmup=5, rep=25, return_mode='median'),
        graph_ms=do_bench_cudagraph(run, rep=25, return_mode='median'),
    )


def measure(
    kinds: Sequence[str],
    shapes: Dict[str, Sequence[int]],
    device: torch.device,
    bandwidth: float,
    layouts: Sequence[Tuple[torch.dtype, bool]] = LAYOUTS,
    counted_file: Optional[dict] = None,
    over_hw_warps: Sequence[Optional[int]] = (None,),
) -> List[dict]:
    """One row per distinct launch (kernel, specialization, warps, grid, shape) of ``kinds``'
    steps, with the reductions over H×W launched at each of ``over_hw_warps`` (None: the
    launchers' own rule; the launches that do not change are measured once); the per-kernel passes from ``counted_file``
    (:func:`census.load_counted_passes`) or counted."""
    rows: List[dict] = []
    done = set()
    default_warps = T.OVER_HW_WARPS
    try:  # the launchers' rule comes back even when a launch fails
        for (dtype, channels_last), warps in itertools.product(layouts, over_hw_warps):
            T.OVER_HW_WARPS = warps
            if counted_file is not None:
                counted = counted_file['kernels'][_layout_name(dtype, channels_last)]
            else:
                counted = kernel_passes(kinds, dtype=dtype, channels_last=channels_last)
            for stage, shape in shapes.items():
                x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0)).to(device, dtype)
                if channels_last:
                    x = x.to(memory_format=torch.channels_last)
                for kind in kinds:
                    for mode, train in (('train', True), ('inference', False)):
                        for seen in step_launches(kind, x, train):
                            launch = seen['launch']
                            ident = (launch.key(), launch.grid, launch.shape)
                            if ident in done:
                                continue
                            done.add(ident)
                            passes = counted[kind][mode][kernel_key(launch)]
                            nbytes = passes * (launch.full_elements or 0) + seen['small_bytes']
                            t = _timed(seen['run'], device)
                            row = dict(
                                kernel=launch.kernel,
                                kind=kind,
                                mode=mode,
                                stage=stage,
                                dtype=str(dtype).replace('torch.', ''),
                                layout='channels_last' if channels_last else 'nchw',
                                grid=list(launch.grid),
                                warps=launch.warps,
                                passes=passes,
                                bytes=nbytes,
                                **t,
                            )
                            for k in ('ms', 'graph_ms'):
                                gbs = nbytes / (t[k] * 1e-3) / 1e9 if t[k] == t[k] else None
                                row[k.replace('ms', 'gbs')] = gbs
                                row[k.replace('ms', 'fraction')] = gbs * 1e9 / bandwidth if gbs is not None else None
                            rows.append(row)
    finally:
        T.OVER_HW_WARPS = default_warps
    return rows


def table(res: dict) -> str:
    e = res['environment']
    lines = [
        f'{e.get("gpu", e["device"])}, driver {e.get("driver")}, torch {e["torch"]}, CUDA {e["cuda"]}, '
        f'triton {e["triton"]}, {e["date"]}; copy bandwidth {res["bandwidth"] / 1e12:.2f} TB/s '
        f'({"measured" if res["bandwidth_measured"] else "assumed"}). Bytes: counted passes × full-size '
        f'bytes + other operands once; time: median of triton.testing.do_bench (launch included) and '
        f'of do_bench_cudagraph (kernel alone).',
        '',
        '| kernel | kind | mode | stage | dtype | layout | grid | warps | MB | µs | GB/s | × copy | graph µs '
        '| graph GB/s | graph × copy |',
        '|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]

    def f(v, spec):
        return '-' if v is None or v != v else format(v, spec)

    for r in res['rows']:
        lines.append(
            f'| {r["kernel"]} | {r["kind"]} | {r["mode"]} | {r["stage"]} | {r["dtype"]} | {r["layout"]} '
            f'| {"×".join(map(str, r["grid"]))} | {r["warps"]} | {r["bytes"] / 1e6:.2f} | {f(r["ms"] * 1e3, ".1f")} '
            f'| {f(r["gbs"], ".0f")} | {f(r["fraction"], ".2f")} | {f(r["graph_ms"] * 1e3, ".1f")} '
            f'| {f(r["graph_gbs"], ".0f")} | {f(r["graph_fraction"], ".2f")} |'
        )
    big = [r for r in res['rows'] if r['bytes'] >= 64e6 and r['graph_fraction'] is not None]
    if big:
        worst = min(big, key=lambda r: r['graph_fraction'])
        lines += [
            '',
            f'Launches moving ≥ 64 MB: {len(big)}; median {statistics.median(r["graph_fraction"] for r in big):.2f} '
            f'of the copy bandwidth (kernel alone), lowest {worst["graph_fraction"]:.2f} ({worst["kernel"]}, '
            f'{worst["kind"]} {worst["mode"]}, {worst["stage"]} {worst["dtype"]} {worst["layout"]}).',
        ]
    return '\n'.join(lines) + '\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--kinds', nargs='+', default=list(KINDS), choices=KINDS)
    parser.add_argument(
        '--shapes', type=int, nargs=4, action='append', metavar=('N', 'C', 'H', 'W'), help='instead of the stage shapes'
    )
    parser.add_argument('--bandwidth', type=float, default=DEFAULT_BANDWIDTH_TBS, help='TB/s where it is not measured')
    parser.add_argument(
        '--passes', help="census.py --counted-passes's file (default: counted here, in Triton's interpreter)"
    )
    parser.add_argument(
        '--layouts',
        nargs='+',
        default=[_layout_name(*layout) for layout in LAYOUTS],
        choices=[_layout_name(*layout) for layout in LAYOUTS],
    )
    parser.add_argument(
        '--over-hw-warps',
        type=int,
        nargs='+',
        default=[None],
        choices=(1, 2, 4, 8, 16, 32),
        help="warps of the reductions over H×W (default: the launchers' rule); several are measured side by side",
    )
    parser.add_argument('--out-dir', required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and T.INTERPRETED:
        parser.error('--device cuda: TRITON_INTERPRET=1 is set; the kernels must be compiled to be timed')
    if device.type != 'cuda' and not T.INTERPRETED:
        parser.error(f'--device {device.type}: the kernels run on a CPU only in the interpreter (TRITON_INTERPRET=1)')
    shapes = {f'shape{i}': s for i, s in enumerate(args.shapes)} if args.shapes else STAGE_SHAPES
    bandwidth = copy_bandwidth(device, args.bandwidth)
    res = dict(
        environment=environment(device),
        bandwidth=bandwidth,
        bandwidth_measured=device.type == 'cuda',
        shapes=shapes,
        rows=[],
    )
    counted = load_counted_passes(args.passes)
    for layout in LAYOUTS:  # written after each, so a run stopped at its time limit keeps what it measured
        if _layout_name(*layout) in args.layouts:
            res['rows'] += measure(args.kinds, shapes, device, bandwidth, [layout], counted, args.over_hw_warps)
        text = table(res)
        write_results(args.out_dir, 'kernel_bandwidth', res, text)
    print(text)


if __name__ == '__main__':
    main()
