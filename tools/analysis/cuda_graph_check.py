"""A ResNet-50 training step with attention captured in one CUDA graph, its replay checked against eager.

CBAM (Woo et al., ECCV 2018) or SE in all 16 bottlenecks after their last BatchNorm (CBAM Fig. 3),
or BAM (Park et al., BMVC 2018) after stages 1-3, under bf16 autocast (or float32): the forward,
the backward of the stage outputs' sum and the BatchNorms' running statistics, all in one
``torch.cuda.graph`` (a module that synced the host or decided on the host from data could not be
captured, or would replay stale). For each variant:

1. warm-up steps on a side stream (the Triton kernels compile, the backend's self-check runs);
2. the step captured (``torch.cuda.graph``; autocast with ``cache_enabled=False``), its Triton
   launches counted at capture;
3. on a new input, the eager step (``torch.autograd.grad``: the graph's gradient tensors stay its
   own), then the parameters and buffers restored and the graph replayed on the same input: the
   loss, every parameter gradient and every buffer (running statistics, batch counts) compared;
4. the eager step's and the replay's milliseconds (CUDA events, median; alternating).

cuDNN runs deterministic algorithms here, so the two differ only where a kernel is not
deterministic; the check allows ``--tol`` of each tensor's largest magnitude.

Usage::

    python tools/analysis/cuda_graph_check.py [--out-dir DIR]                 # on the GPU
    python tools/analysis/cuda_graph_check.py --device cpu --width 8 --shape 2 3 64 64   # dry run

``--device cpu`` (the dry run) cannot capture: it runs the same steps with the "replay" an eager
step after the restore, so the comparison, the restore and the tables are checked on the CPU.
Writes ``cuda_graph.{json,md}`` into ``--out-dir``; exits 1 when a variant fails its check.
"""

import argparse
import contextlib
import os.path as osp
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from toolkit import ResNet50, environment, outputs_sum, write_results  # noqa: E402

from cbam_det import BAM, CBAM, SE  # noqa: E402
from cbam_det.kernels import launch as L  # noqa: E402
from cbam_det.kernels import use_backend  # noqa: E402

__all__ = ['VARIANTS', 'check_variant', 'main']

#: name -> (network factory at base width w, backend)
VARIANTS: Dict[str, Tuple[Callable[[int], torch.nn.Module], str]] = {
    'plain': (lambda w: ResNet50(width=w), 'torch'),
    'cbam': (lambda w: ResNet50(lambda c: CBAM(c, inplace=True), width=w), 'auto'),
    'cbam_torch': (lambda w: ResNet50(lambda c: CBAM(c, inplace=True), width=w), 'torch'),
    'se': (lambda w: ResNet50(lambda c: SE(c, inplace=True), width=w), 'auto'),
    'bam3': (lambda w: ResNet50(bam=lambda c: BAM(c, inplace=True), width=w), 'auto'),
}


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| over the largest magnitude of ``b`` (0 for two zero tensors)."""
    a, b = a.double(), b.double()
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    return diff / scale if scale > 0 else diff


def _time(fn: Callable[[], None], device: torch.device, repeats: int) -> List[float]:
    out = []
    for _ in range(repeats):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
    return out


def check_variant(
    name: str,
    device: torch.device,
    shape,
    width: int,
    amp,
    repeats: int,
    tol: float,
    warmup: int = 3,
    auto: str = 'auto',
) -> dict:
    """Capture ``name``'s training step, replay it and compare it with eager (see the module doc);
    ``auto``: the backend of the variants that leave the choice to ``auto``."""
    make, backend = VARIANTS[name]
    backend = auto if backend == 'auto' else backend
    torch.manual_seed(0)
    model = make(width).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator(device='cpu').manual_seed(1)
    static_x = torch.randn(shape, generator=gen).to(device)
    capture = device.type == 'cuda'

    def forward_loss() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None, cache_enabled=False):
            return outputs_sum(model(static_x))

    def step() -> torch.Tensor:  # what is captured: forward, backward into p.grad
        loss = forward_loss()
        loss.backward()
        return loss

    launches = [0]

    def count(kernel, grid, args, meta, warps, run):
        launches[0] += 1
        run()

    with use_backend(backend):
        side = torch.cuda.Stream() if capture else None
        if capture:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side) if capture else contextlib.nullcontext():
            for _ in range(warmup):
                model.zero_grad(set_to_none=True)
                step()
        if capture:
            torch.cuda.current_stream().wait_stream(side)
        model.zero_grad(set_to_none=True)
        with L.observe(count):
            if capture:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_loss = step().detach()
                replay = graph.replay
            else:  # the dry run: the "replay" is an eager step into the same gradient tensors
                static_loss = step().detach()

                def replay():
                    with torch.no_grad():
                        for p in params:
                            p.grad.zero_()
                    static_loss.copy_(step().detach())  # (a detached view: no autograd)

        static_grads = [p.grad for p in params]

        # the eager step on a new input, then the same input replayed from the same state
        static_x.copy_(torch.randn(shape, generator=gen).to(device))
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        loss = forward_loss()
        grads = torch.autograd.grad(loss, params)
        after = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved[k])
        replay()
        if capture:
            torch.cuda.synchronize(device)
        errors = {'loss': _max_rel(static_loss.detach(), loss.detach())}
        errors['gradients'] = max(_max_rel(g, r) for g, r in zip(static_grads, grads))
        state = model.state_dict()
        errors['buffers'] = max(
            (_max_rel(state[k], after[k]) for k in after if not k.endswith('num_batches_tracked')), default=0.0
        )
        counts_equal = all(torch.equal(state[k], after[k]) for k in after if k.endswith('num_batches_tracked'))

        def eager_step():
            model.zero_grad(set_to_none=True)
            step()

        eager_ms, replay_ms = [], []
        for r in range(repeats):  # alternating, one step each
            pair = ((eager_ms, eager_step), (replay_ms, replay))
            for out, fn in pair if r % 2 == 0 else pair[::-1]:
                out += _time(fn, device, 1)
    ok = all(v <= tol for v in errors.values()) and counts_equal
    return dict(
        variant=name,
        backend=backend,
        captured=capture,
        triton_launches=launches[0],
        errors=errors,
        batch_counts_equal=counts_equal,
        eager_ms=statistics.median(eager_ms),
        replay_ms=statistics.median(replay_ms),
        ok=ok,
    )


def table(res: dict) -> str:
    e = res['environment']
    shape = 'x'.join(map(str, res['shape']))
    lines = [
        f'ResNet-50 (base width {res["width"]}) training step at {shape}, {res["dtype"]}, on '
        f'{e.get("gpu") or e["device"]}, {e["date"][:10]}: one CUDA graph (forward, backward, running statistics)'
        + ('' if res['captured'] else ' (dry run: no capture, the "replay" is an eager step)'),
        '',
        '| variant | backend | Triton launches captured | loss err | grad err | buffer err | eager ms | replay ms '
        '| ok |',
        '|---|---|---:|---:|---:|---:|---:|---:|---|',
    ]
    for r in res['rows']:
        er = r['errors']
        lines.append(
            f'| {r["variant"]} | {r["backend"]} | {r["triton_launches"]} | {er["loss"]:.1e} | {er["gradients"]:.1e} | '
            f'{er["buffers"]:.1e} | {r["eager_ms"]:.2f} | {r["replay_ms"]:.2f} | {"yes" if r["ok"] else "NO"} |'
        )
    lines.append('')
    lines.append(f"err: max |replay − eager| over the eager tensor's largest magnitude; limit {res['tol']:g}")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda', help='cuda (capture) or cpu (dry run)')
    parser.add_argument('--shape', type=int, nargs=4, default=(2, 3, 800, 1344), metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--width', type=int, default=64, help="the ResNet-50's base width")
    parser.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float16', 'float32'])
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3, help='eager steps before the capture')
    parser.add_argument('--tol', type=float, default=1e-2)
    parser.add_argument(
        '--backend',
        default='auto',
        choices=['auto', 'triton', 'torch', 'cpu'],
        help="the backend of the variants that take auto's (the dry run: triton, interpreted)",
    )
    parser.add_argument('--out-dir', default='work_dirs/cuda_graph')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type not in ('cuda', 'cpu'):
        parser.error(f'--device: want cuda or cpu, got {args.device!r}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device here (use --device cpu for the dry run)')
    if args.repeats < 1 or args.width < 1 or args.warmup < 1:
        parser.error('--repeats, --warmup and --width must be >= 1')
    if not 0 < args.tol < 1:
        parser.error(f'--tol: want a number in (0, 1), got {args.tol}')
    if device.type == 'cuda':
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    amp = None if args.dtype == 'float32' else getattr(torch, args.dtype)
    res = dict(
        environment=environment(device),
        shape=list(args.shape),
        width=args.width,
        dtype=args.dtype,
        tol=args.tol,
        captured=device.type == 'cuda',
        rows=[],
    )
    for name in args.variants:
        try:
            row = check_variant(
                name, device, tuple(args.shape), args.width, amp, args.repeats, args.tol, args.warmup, args.backend
            )
        except Exception as e:  # a variant that cannot be captured is a result, reported
            row = dict(variant=name, backend=args.backend, error=f'{type(e).__name__}: {e}', ok=False)
            print(f'cuda_graph_check: {name}: {row["error"]}', file=sys.stderr)
        res['rows'].append(row)
        write_results(args.out_dir, 'cuda_graph', res, table(dict(res, rows=[r for r in res['rows'] if 'errors' in r])))
    text = table(dict(res, rows=[r for r in res['rows'] if 'errors' in r]))
    for r in res['rows']:
        if 'error' in r:
            text += f'{r["variant"]}: not captured: {r["error"]}\n'
    write_results(args.out_dir, 'cuda_graph', res, text)
    print(text)
    return 0 if all(r['ok'] for r in res['rows']) else 1


if __name__ == '__main__':
    sys.exit(main())
