"""Eager against ``torch.compile``, side by side in one process: a ResNet with attention in every
block, each way of running it, against the plain network compiled.

    python tools/analysis/compile_bench.py --backbone r50 --attention cbam --shape 1 3 512 768 \\
        --repeats 5 --json work_dirs/compile_bench.json

Variants (the models built by ``toolkit.mmdet_model``, real activations):

- ``plain_eager``, ``plain_compiled``: the network without attention;
- ``ours_eager``: the attention on the kernel backend (``--backend``, default ``cpu``) in eager
  mode: the fused autograd functions;
- ``ours_compiled``: the same under ``torch.compile``: the ``cbam_det::`` ops in inductor's graph;
- ``torch_compiled``: the ``torch`` backend under ``torch.compile`` (inductor's own kernels for the
  attention);
- ``auto_compiled``: what ``auto`` runs under ``torch.compile``.

Times: inference = eval-mode forward under no_grad, training step = train-mode forward +
backward; the variants alternate inside every repeat (``toolkit.time_alternating``) after one
warm-up call each, in which the compiled ones compile. Reported per variant: median time and the
median of its per-repeat ratio to ``plain_compiled``.
"""

import argparse
import json
import os
import statistics
import sys
from typing import Dict

import torch
from toolkit import environment, mmdet_model, step_fns, time_alternating  # (puts the repository on sys.path)

VARIANTS = (
    'plain_eager',
    'plain_compiled',
    'ours_eager',
    'ours_compiled',
    'torch_compiled',
    'auto_compiled',
)


def build_steps(args) -> Dict[str, Dict[str, object]]:
    """Every variant's step functions (models built from one seed: same weights)."""
    x = torch.randn(*args.shape)
    steps = {}
    for name in args.variants:
        torch.manual_seed(0)
        plain = name.startswith('plain')
        model = mmdet_model('plain' if plain else 'attn', backbone=args.backbone, attention=args.attention)
        compiled = name.endswith('compiled')
        backend = {'ours': args.backend, 'torch': 'torch', 'auto': 'auto'}.get(name.split('_')[0], 'auto')
        run = torch.compile(model) if compiled else model
        steps[name] = step_fns(model, x, backend=backend, run=run)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--backbone', default='r50')
    parser.add_argument('--attention', default='cbam', choices=['cbam', 'se', 'bam'])
    parser.add_argument('--backend', default='cpu', choices=['cpu', 'triton'], help='the kernels of ours_*')
    parser.add_argument('--shape', type=int, nargs=4, default=(1, 3, 512, 768), metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--kinds', nargs='+', default=['train', 'inference'], choices=['train', 'inference'])
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS[:5]), choices=VARIANTS)
    parser.add_argument('--json', help='write the results here too')
    args = parser.parse_args()
    if 'plain_compiled' not in args.variants:
        parser.error('--variants: plain_compiled is the baseline of every ratio; keep it')

    times = time_alternating(build_steps(args), 'cpu', args.repeats, kinds=args.kinds)
    base = times['plain_compiled']
    rows = {}
    print(f'{args.backbone} + {args.attention} ×every block, input {tuple(args.shape)}, {args.repeats} repeats')
    print(f'{"variant":16s} ' + ' '.join(f'{k + " ms":>12s} {"× compiled plain":>17s}' for k in args.kinds))
    for name in args.variants:
        row = {}
        for kind in args.kinds:
            ratio = statistics.median(t / b for t, b in zip(times[name][kind], base[kind]))
            row[kind] = {'median_ms': 1e3 * statistics.median(times[name][kind]), 'ratio': ratio}
        rows[name] = row
        print(f'{name:16s} ' + ' '.join(f'{row[k]["median_ms"]:12.0f} {row[k]["ratio"]:17.3f}' for k in args.kinds))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            res = {'args': vars(args), 'environment': environment('cpu'), 'rows': rows, 'times': times}
            json.dump(res, f, indent=1)
    sys.stdout.flush()


if __name__ == '__main__':
    main()
