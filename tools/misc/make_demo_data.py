"""Write the synthetic demo dataset (:mod:`cbam_det.utils.demo_data`) to a folder.

python tools/misc/make_demo_data.py --out data/demo
"""

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # run from a clone without install
from cbam_det.utils.demo_data import CLASSES, generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/demo', help='output folder (git-ignored)')
    parser.add_argument('--num-train', type=int, default=400)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--size', type=int, nargs=2, default=(160, 160), metavar=('W', 'H'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.num_train < 1 or args.num_val < 1:
        parser.error('--num-train and --num-val must be >= 1')
    counts = generate(args.out, args.num_train, args.num_val, tuple(args.size), seed=args.seed)
    print(f'wrote {counts} images of {args.size[0]}x{args.size[1]} to {args.out} (classes: {", ".join(CLASSES)})')


if __name__ == '__main__':
    main()
