"""Host time of one attention module step (CBAM, Woo et al. ECCV 2018; SE; BAM, Park et al.
BMVC 2018) on each path, with the device's work taken out: what a GPU waits for when the
network is launch-bound (a ResNet-50 at batch 2 on an H200 is: see docs/performance.md).

    TRITON_INTERPRET=1 CBAM_DET_LAYERS_ONLY=1 python tools/analysis/host_overhead.py

Each module runs forward + backward on a tiny CPU tensor (``--shape``, default 2×256×4×4, one
thread), so the arithmetic is negligible and what is left is Python, the dispatcher and
autograd. The Triton path runs as ``auto`` runs it on a GPU (fallback allowed) with every
launch skipped at the launch-observer seam (``triton_gate.observe``): what remains is our
launchers' planning, the small gate graphs and the autograd around them. Paths, side by side
in one process, alternating inside every repeat: the eager CBAM (eager_reference.py), timm's
``CbamModule`` (when timm is installed), and ours on the ``torch`` and on the Triton path;
SE and BAM on both paths. Prints µs per step, each as a ratio to the eager CBAM.
"""

import argparse
import contextlib
import json
import statistics
import time
from typing import Callable, Dict
from unittest import mock

import torch
from eager_reference import EagerCBAM

from cbam_det import BAM, CBAM, SE, kernels
from cbam_det.kernels import dispatch
from cbam_det.kernels import triton_gate as T

__all__ = ['paths', 'measure']


def _skip(kernel, grid, args, meta, warps, run) -> None:
    """An observer that launches nothing."""


@contextlib.contextmanager
def _triton_as_auto() -> None:
    """The Triton path as ``auto`` takes it on a GPU: fallback allowed, launches skipped."""
    if not T.INTERPRETED:
        raise RuntimeError('host_overhead: run with TRITON_INTERPRET=1 (CPU tensors take the Triton path only there)')
    with kernels.use_backend('auto'), contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(dispatch, 'select_backend', lambda x, module=None, bn=None: 'triton'))
        stack.enter_context(T.observe(_skip))
        yield


def paths(c: int) -> Dict[str, tuple]:
    """{name: (module factory, context factory)} of the measured paths for ``c`` channels."""
    torch_path = lambda: kernels.use_backend('torch')  # noqa: E731
    out = {
        'cbam_eager': (lambda: EagerCBAM(CBAM(c)), torch_path),
        'cbam_torch': (lambda: CBAM(c, inplace=True), torch_path),
        'cbam_triton': (lambda: CBAM(c, inplace=True), _triton_as_auto),
        'se_torch': (lambda: SE(c, inplace=True), torch_path),
        'se_triton': (lambda: SE(c, inplace=True), _triton_as_auto),
        'bam_torch': (lambda: BAM(c, inplace=True), torch_path),
        'bam_triton': (lambda: BAM(c, inplace=True), _triton_as_auto),
    }
    try:
        from timm.layers.cbam import CbamModule
    except ImportError:
        return out
    out['cbam_timm'] = (lambda: CbamModule(c), torch_path)
    return out


def _step_fn(make: Callable, x0: torch.Tensor) -> Callable[[], None]:
    torch.manual_seed(0)
    m = make().train()

    def step() -> None:
        x = x0.clone().requires_grad_()
        y = m(x)
        y.backward(torch.ones_like(y))

    return step


def measure(shape=(2, 256, 4, 4), repeats: int = 5, steps: int = 50, warmup: int = 10) -> Dict[str, float]:
    """Median µs per forward + backward of each path, the paths alternating inside each repeat."""
    x0 = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    chosen = paths(shape[1])
    fns = {name: (_step_fn(make, x0), ctx) for name, (make, ctx) in chosen.items()}
    times: Dict[str, list] = {name: [] for name in fns}
    for r in range(repeats + 1):
        for name, (step, ctx) in fns.items():
            with ctx():
                n = warmup if r == 0 else steps
                t = time.perf_counter()
                for _ in range(n):
                    step()
                if r:
                    times[name].append((time.perf_counter() - t) / n * 1e6)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shape', type=int, nargs=4, default=(2, 256, 4, 4), metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--steps', type=int, default=50, help='steps per repeat')
    parser.add_argument('--json', help='write the results here too')
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 1:
        parser.error('--repeats and --steps must be >= 1')
    torch.set_num_threads(1)
    res = measure(tuple(args.shape), args.repeats, args.steps)
    base = res['cbam_eager']
    shape = 'x'.join(map(str, args.shape))
    print(f'host µs per forward + backward at {shape} (CPU, 1 thread), median of {args.repeats}')
    print('| path | µs | × eager CBAM |\n|---|---:|---:|')
    for name, us in res.items():
        print(f'| {name} | {us:.0f} | {us / base:.2f} |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(shape=list(args.shape), repeats=args.repeats, steps=args.steps, us=res), f, indent=1)


if __name__ == '__main__':
    main()
