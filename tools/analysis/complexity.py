"""Parameters and GFLOPs of a config (or a backbone spec) with and without its attention.

    python tools/analysis/complexity.py configs/faster_rcnn/faster-rcnn_r50-cbam_fpn_1x_coco.py --shape 800 1333
    python tools/analysis/complexity.py --backbone "dict(type='AttnResNet', depth=50, attention=dict(type='CBAM'))" \
        --shape 224 224 --classifier 1000      # ImageNet network: CBAM paper Table 4

"Without attention" is the same config with every ``attention``, ``bam`` and ``plugins``
entry removed. FLOPs are multiply-accumulates of convolutions, linear layers, matmuls,
norms and upsampling, counted by mmengine's FlopAnalyzer (fvcore rules: one FLOP per
MAC; element-wise ops, pooling reductions and sigmoids are not counted). Two-stage
detectors are counted per part: backbone + neck + RPN at the input size, plus the RoI
head per RoI times ``--num-rois`` (the count of the whole traced model would depend on
how many proposals survive NMS). Nothing is downloaded: pretrained init is not run.
"""

import argparse
import copy
import json
import os.path as osp
import sys
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config, ConfigDict, DictAction

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

import cbam_det  # noqa: E402,F401  (only registration)
from cbam_det.utils import has_attention, no_pretrained, strip_attention  # noqa: E402


def count_flops(module: nn.Module, *inputs) -> int:
    analyzer = FlopAnalyzer(module, inputs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return int(analyzer.total())


class _Classifier(nn.Module):
    """Backbone + global average pool + fc: the ImageNet networks of the papers' Table 4."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        channels = backbone(torch.zeros(1, 3, 64, 64))[-1].shape[1]
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.backbone(x)[-1].mean((2, 3)))


class _Dense(nn.Module):
    """backbone → neck → (rpn_head | bbox_head) forward, as a traceable module."""

    def __init__(self, model: nn.Module, head: Optional[nn.Module]) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x):
        feats = self.model.extract_feat(x)
        return self.head(feats) if self.head is not None else feats


def measure(
    model_cfg: dict, shape: Tuple[int, int], num_rois: int, classifier: Optional[int], is_backbone: bool
) -> Dict[str, float]:
    """Parameters and FLOPs of one model config."""
    torch.manual_seed(0)
    model = MODELS.build(ConfigDict(copy.deepcopy(model_cfg)))
    model.eval()  # not chained: mmdet's ResNet.train returns None
    x = torch.randn(1, 3, *shape)
    out: Dict[str, float] = {}
    with torch.no_grad():
        if is_backbone:
            if classifier:
                model = _Classifier(model, classifier).eval()
            out['params'] = sum(p.numel() for p in model.parameters())
            out['flops'] = count_flops(model, x)
            return out
        out['params'] = sum(p.numel() for p in model.parameters())
        roi_head = getattr(model, 'roi_head', None)
        if roi_head is None:  # one-stage: the whole dense forward
            out['flops'] = count_flops(_Dense(model, model.bbox_head), x)
            return out
        dense = count_flops(_Dense(model, getattr(model, 'rpn_head', None)), x)
        feats = model.extract_feat(x)
        extractor = roi_head.bbox_roi_extractor
        size = extractor.roi_layers[0].output_size
        roi_feat = torch.randn(1, extractor.out_channels, *((size, size) if isinstance(size, int) else size))
        per_roi = 0
        if roi_head.with_shared_head:
            per_roi += count_flops(roi_head.shared_head, roi_feat)
            roi_feat = roi_head.shared_head(roi_feat)
        per_roi += count_flops(roi_head.bbox_head, roi_feat)
        out.update(dense_flops=dense, roi_flops_per_roi=per_roi, flops=dense + num_rois * per_roi)
        del feats
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', help='a detector config')
    parser.add_argument(
        '--backbone', help='instead of a config: a backbone dict, e.g. "dict(type=\'AttnResNet\', depth=50)"'
    )
    parser.add_argument(
        '--classifier',
        type=int,
        default=0,
        help='with --backbone: add global pooling + fc to this many classes (ImageNet: 1000)',
    )
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'))
    parser.add_argument(
        '--num-rois',
        type=int,
        default=1000,
        help='RoIs per image for the RoI-head share of two-stage detectors (mmdet test default: 1000)',
    )
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--json', help='also write the results to this JSON file')
    args = parser.parse_args()
    if bool(args.config) == bool(args.backbone):
        parser.error('give either a config or --backbone')
    register_all_modules()
    if args.backbone:
        model_cfg = eval(args.backbone, {'dict': dict})  # a literal dict spec from the command line
        name = args.backbone
    else:
        cfg = Config.fromfile(args.config)
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        model_cfg = cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else dict(cfg.model)
        name = osp.basename(args.config)
    model_cfg = no_pretrained(model_cfg)
    rows = {
        'with attention': measure(model_cfg, tuple(args.shape), args.num_rois, args.classifier, bool(args.backbone))
    }
    if has_attention(model_cfg):
        rows['without attention'] = measure(
            strip_attention(model_cfg), tuple(args.shape), args.num_rois, args.classifier, bool(args.backbone)
        )
    print(
        f'{name}  input 1x3x{args.shape[0]}x{args.shape[1]}'
        + (f'  (two-stage: {args.num_rois} RoIs)' if 'dense_flops' in rows['with attention'] else '')
    )
    print(f'{"":20s}{"params":>16s}{"GFLOPs":>12s}')
    for k, r in rows.items():
        print(f'{k:20s}{r["params"]:>16,d}{r["flops"] / 1e9:>12.4f}')
    result = dict(config=name, shape=list(args.shape), num_rois=args.num_rois, rows=rows)
    if len(rows) == 2:
        a, b = rows['with attention'], rows['without attention']
        ov = dict(
            params=a['params'] - b['params'],
            params_pct=100 * (a['params'] / b['params'] - 1),
            gflops=(a['flops'] - b['flops']) / 1e9,
            flops_pct=100 * (a['flops'] / b['flops'] - 1),
        )
        print(
            f'{"overhead":20s}{ov["params"]:>+16,d}{ov["gflops"]:>+12.4f}   '
            f'(params {ov["params_pct"]:+.2f}%, FLOPs {ov["flops_pct"]:+.2f}%)'
        )
        result['overhead'] = ov
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
