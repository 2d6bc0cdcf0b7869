"""Convert the authors' official CBAM/BAM ImageNet checkpoint for cbam_det's AttnResNet.

    python tools/model_converters/official_to_mmdet.py RESNET50_CBAM.pth.tar out/resnet50_cbam.pth

The output loads with ``init_cfg=dict(type='Pretrained', checkpoint='out/resnet50_cbam.pth')``
in ``AttnResNet`` with the printed attention arguments. Every dropped key (the ImageNet
``fc``) is reported; a key that cannot be placed stops the conversion.
"""

import argparse
import os
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from cbam_det.converters import OFFICIAL_CONFIGS, convert_official_state_dict  # noqa: E402
from cbam_det.engine import UnsafeCheckpointError, load_untrusted  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='official checkpoint (legacy PyTorch pickle, "module." keys)')
    parser.add_argument('dst', help='output checkpoint for mmdet / mmengine')
    parser.add_argument(
        '--unsafe-load',
        action='store_true',
        help='unpickle SRC without weights_only=True (only for a file you trust: it can run code)',
    )
    args = parser.parse_args()
    # the official files (epoch, arch, state_dict, best_prec1, SGD optimizer state) load with
    # weights_only=True: nothing in them needs code to be rebuilt
    try:
        ckpt = load_untrusted(args.src, unsafe=args.unsafe_load)
    except UnsafeCheckpointError as e:
        sys.exit(str(e))
    state = ckpt['state_dict'] if isinstance(ckpt, dict) and 'state_dict' in ckpt else ckpt
    if not isinstance(state, dict):
        sys.exit(f'{args.src}: expected a state dict or a dict with "state_dict", got {type(state).__name__}')
    new, dropped, kind = convert_official_state_dict(state)
    for k in dropped:
        print(f'dropped: {k} {tuple(state[k].shape)}')
    meta = dict(source=osp.basename(args.src), kind=kind)
    for key in ('arch', 'epoch', 'best_prec1'):
        if isinstance(ckpt, dict) and key in ckpt:
            meta[key] = ckpt[key] if not torch.is_tensor(ckpt[key]) else ckpt[key].item()
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(dict(state_dict=new, meta=meta), args.dst)
    print(f'converted {len(new)} tensors ({kind}) from {args.src} to {args.dst}; meta: {meta}')
    if kind in OFFICIAL_CONFIGS:
        print(
            f'use it with: backbone=dict(type="AttnResNet", depth=50, **{OFFICIAL_CONFIGS[kind]}, '
            f'freeze_attention=True, init_cfg=dict(type="Pretrained", checkpoint="{args.dst}"))'
        )


if __name__ == '__main__':
    main()
