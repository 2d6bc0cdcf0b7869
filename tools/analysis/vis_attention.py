"""Attention maps and class-activation maps of a detector's detections, baseline beside the
attention model (CBAM paper, Woo et al., ECCV 2018, Fig. 5: Grad-CAM of a baseline and of the
same network with CBAM).

    python tools/analysis/vis_attention.py CONFIG CHECKPOINT IMAGE [IMAGE ...] --out-dir DIR \\
        [--baseline CONFIG CHECKPOINT] [--target-layers backbone.layer4] \\
        [--method gradcam|gradcam++|eigencam|ablationcam] [--score-thr 0.3]

For each image one PNG (DIR/<image name>.png), one row per model:
- the detections above ``--score-thr`` (mmdet's ``DetLocalVisualizer``);
- a class-activation map for the highest-scoring detection (the ``grad-cam`` package; target:
  its ``FasterRCNNBoxScoreTarget`` for that box and label, i.e. IoU with the box plus the score of
  the matching detection, which on the image itself is 1 + the detection's score);
- per stage, the attention the model applied in this forward, recorded from the modules by
  :func:`cbam_det.kernels.record_attention` (whatever backend ran them): CBAM's spatial gate
  M_s with the strongest channels of M_c in the title, SE's strongest channels, BAM's M(F)
  averaged over channels. Stage = the module path up to its block index; the stage's last
  module is shown.
"""

import argparse
import contextlib
import copy
import os
import os.path as osp
import sys
import textwrap
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
import cbam_det  # noqa: E402,F401  (registers the models)
from cbam_det.engine.safe_load import load_untrusted  # noqa: E402
from cbam_det.kernels import record_attention  # noqa: E402
from cbam_det.models.layers import BAM, AttentionModule  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METHODS = ('gradcam', 'gradcam++', 'eigencam', 'ablationcam')
MAX_STAGE_PANELS = 6


# ----------------------------------------------------------------------------- loading
def load_detector(config: str, checkpoint: str, device: str = 'cpu', unsafe_load: bool = False) -> nn.Module:
    """The detector of ``config`` with the weights of ``checkpoint``; every key must match.

    Checkpoints load with ``weights_only=True`` unless ``unsafe_load`` or they lie under this
    checkout's ``work_dirs/`` (written by its own training runs, as tools/test.py trusts its work_dir).
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config, ConfigDict

    from cbam_det.utils import no_pretrained

    for path, what in ((config, 'config'), (checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'vis_attention: {what} {path!r} does not exist')
    register_all_modules()
    cfg = Config.fromfile(config)
    model = MODELS.build(ConfigDict(no_pretrained(cfg.model.to_dict())))
    own = osp.realpath(checkpoint).startswith(osp.join(osp.realpath(REPO), 'work_dirs') + osp.sep)
    ckpt = load_untrusted(checkpoint, unsafe=unsafe_load or own)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f'vis_attention: checkpoint {checkpoint!r} does not match config {config!r}: {e}') from e
    if missing or unexpected:
        raise ValueError(
            f'vis_attention: checkpoint {checkpoint!r} does not match config {config!r}: '
            f'{len(missing)} keys missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})'
        )
    meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
    model.dataset_meta = meta.get('dataset_meta') or dict(cfg.get('metainfo', {})) or {'classes': ()}
    model.cfg = cfg
    return model.to(device).eval()


def read_image(path: str) -> np.ndarray:
    """BGR uint8 (H, W, 3), as mmdet's loaders give it."""
    import mmcv

    if not osp.isfile(path):
        raise FileNotFoundError(f'vis_attention: image {path!r} does not exist')
    return mmcv.imread(path, channel_order='bgr')


def preprocess(model: nn.Module, img_bgr: np.ndarray) -> Tuple[torch.Tensor, list]:
    """The test pipeline of the model's config (annotation loading dropped) and its data
    preprocessor: (network input (1, 3, H, W), data samples)."""
    from mmcv.transforms import Compose
    from mmdet.utils import get_test_pipeline_cfg
    from mmengine.dataset import pseudo_collate

    steps = copy.deepcopy(get_test_pipeline_cfg(model.cfg))
    steps = [s for s in steps if 'LoadAnnotations' not in str(s['type'])]
    steps[0] = dict(type='mmdet.LoadImageFromNDArray')
    data = Compose(steps)(dict(img=img_bgr, img_id=0))
    batch = model.data_preprocessor(pseudo_collate([data]), False)
    return batch['inputs'], batch['data_samples']


# ----------------------------------------------------------------------------- what the model did
@contextlib.contextmanager
def scores_keep_gradients():
    """mmdet's dense heads detach their score maps in ``predict_by_feat``
    (``select_single_mlvl(..., detach=True)``), so no gradient would reach a one-stage
    detector's features; inside this block they do not (the values are unchanged)."""
    from mmdet.models.dense_heads import base_dense_head

    original = base_dense_head.select_single_mlvl
    base_dense_head.select_single_mlvl = lambda mlvl, img_id, detach=True: original(mlvl, img_id, detach=False)
    try:
        yield
    finally:
        base_dense_head.select_single_mlvl = original


class DetectionOutputs(nn.Module):
    """The detector as the CAM library sees it: image batch → one dict of boxes, labels and
    scores per image (in the network input frame), gradients kept (:func:`scores_keep_gradients`)."""

    def __init__(self, detector: nn.Module, data_samples: list) -> None:
        super().__init__()
        self.detector, self.samples = detector, data_samples

    def forward(self, x: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        samples = [copy.deepcopy(self.samples[0]) for _ in range(x.shape[0])]
        with scores_keep_gradients():
            results = self.detector.predict(x, samples, rescale=False)
        return [
            dict(boxes=r.pred_instances.bboxes, labels=r.pred_instances.labels, scores=r.pred_instances.scores)
            for r in results
        ]


def stage_of(name: str) -> str:
    """'backbone.layer1.2.cbam' → 'backbone.layer1'; names without a block index stay whole."""
    parts = name.split('.')
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    return '.'.join(parts[: idx[-1]]) if idx else name


def attention_modules(model: nn.Module) -> Dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AttentionModule)}


def recorded_panels(model: nn.Module, gates: dict) -> List[dict]:
    """Per stage (its last module that recorded gates): a 2-d map to show and a title."""
    stages: Dict[str, Tuple[str, nn.Module]] = {}
    for name, m in attention_modules(model).items():
        if m in gates:
            stages[stage_of(name)] = (name, m)
    panels = []
    for stage, (name, m) in stages.items():
        g = gates[m]
        top = ''
        if 'channel' in g:
            vals, idx = g['channel'][0].topk(min(3, g['channel'].shape[1]))
            top = ' '.join(f'c{i}:{v:.2f}' for v, i in zip(vals.tolist(), idx.tolist()))
        if isinstance(m, BAM):
            c, s = g['bam_channel'][:, :, None, None], g['bam_spatial'][:, None]
            heat, what = m.combined(c, s)[0].mean(0), 'M(F) mean over C'
        elif 'spatial' in g:
            heat, what = g['spatial'][0], 'M_s'
        else:  # SE: channel attention only
            heat, what = None, 'M_c'
        panels.append(dict(stage=stage, module=name, kind=type(m).__name__, heat=heat, what=what, top=top))
    return panels[-MAX_STAGE_PANELS:]


def get_layer(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        children = [n for n, _ in model.named_children()]
        raise ValueError(
            f'vis_attention: --target-layers {path!r} is not a module of the model; top-level modules: {children}'
        ) from None


def default_target_layer(model: nn.Module) -> str:
    """The backbone's last numbered stage (ResNet ``layer4``, CSPDarknet ``stage4``, ...), else
    its last child module."""
    names = [n for n, _ in model.backbone.named_children()]
    stages = [n for n in names if n[-1].isdigit() and not n.startswith(('bam', 'attention'))]
    return f'backbone.{(stages or names)[-1]}'


def class_activation(
    model: nn.Module,
    inputs: torch.Tensor,
    samples: list,
    box: torch.Tensor,
    label: int,
    layers: Sequence[str],
    method: str,
) -> np.ndarray:
    """(H, W) map in [0, 1] over the network input for the detection (box, label)."""
    from pytorch_grad_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    cls = {'gradcam': GradCAM, 'gradcam++': GradCAMPlusPlus, 'eigencam': EigenCAM, 'ablationcam': AblationCAM}[method]
    wrapped = DetectionOutputs(model, samples)
    target = FasterRCNNBoxScoreTarget(labels=[label], bounding_boxes=[box.detach().cpu().numpy()])
    kwargs = dict(batch_size=8) if method == 'ablationcam' else {}
    with cls(model=wrapped, target_layers=[get_layer(model, p) for p in layers], **kwargs) as cam:
        heat = cam(input_tensor=inputs.clone(), targets=[target])
    return heat[0]


def analyse(
    model: nn.Module,
    img_bgr: np.ndarray,
    layers: Sequence[str],
    method: str,
    score_thr: float,
    target: Optional[dict] = None,
) -> dict:
    """Everything one row of the figure shows. The CAM explains this model's highest-scoring
    detection, or ``target`` (another row's ``chosen``: the same box and class, Fig. 5's
    like-for-like comparison), with the score of this model's matching detection."""
    inputs, samples = preprocess(model, img_bgr)
    with torch.no_grad(), record_attention() as gates:
        result = model.predict(inputs, copy.deepcopy(samples), rescale=True)[0]
    inst = result.pred_instances
    out = dict(result=result, panels=recorded_panels(model, gates), cam=None, chosen=None, inputs=inputs)
    if target is None and bool((inst.scores >= score_thr).any()):
        k = int(inst.scores.argmax())
        target = dict(index=k, label=int(inst.labels[k]), score=float(inst.scores[k]), box=inst.bboxes[k].tolist())
    if target is not None:
        sx, sy = samples[0].metainfo['scale_factor'][:2]  # original image → network input frame
        box = torch.tensor(target['box']) * torch.tensor([sx, sy, sx, sy])
        match = _matching(inst, torch.tensor(target['box']), target['label'])
        score = float(inst.scores[match]) if match is not None else 0.0
        out['chosen'] = dict(target, index=match, score=score)
        if match is not None:  # no matching detection: nothing for the map to explain
            out['cam'] = class_activation(model, inputs, samples, box, target['label'], layers, method)
    return out


def _matching(inst, box: torch.Tensor, label: int) -> Optional[int]:
    """Index of the detection of class ``label`` overlapping ``box`` most (IoU > 0.5), or None."""
    import torchvision

    same = (inst.labels == label).nonzero()[:, 0]
    if len(same) == 0:
        return None
    ious = torchvision.ops.box_iou(box[None], inst.bboxes[same].float())[0]
    best = int(ious.argmax())
    return int(same[best]) if float(ious[best]) > 0.5 else None


# ----------------------------------------------------------------------------- drawing
def to_image_frame(heat: np.ndarray, meta: dict, pad_shape: Tuple[int, int]) -> np.ndarray:
    """A map over the padded network input → over the original image."""
    import cv2

    h, w = meta['img_shape'][:2]
    ph, pw = pad_shape
    hh, ww = heat.shape
    crop = heat[: max(1, round(hh * h / ph)), : max(1, round(ww * w / pw))]
    oh, ow = meta['ori_shape'][:2]
    return cv2.resize(np.ascontiguousarray(crop, dtype=np.float32), (ow, oh), interpolation=cv2.INTER_LINEAR)


def draw_detections(model: nn.Module, img_rgb: np.ndarray, result, score_thr: float) -> np.ndarray:
    from mmdet.visualization import DetLocalVisualizer

    vis = DetLocalVisualizer.get_instance(f'cbam_det_vis_attention_{id(model)}')
    meta = dict(model.dataset_meta)
    classes = list(meta.get('classes') or ())
    labels = result.pred_instances.labels
    top = int(labels.max()) + 1 if len(labels) else 0
    meta['classes'] = tuple(classes + [f'class {i}' for i in range(len(classes), top)])  # names the meta lacks
    if len(meta.get('palette') or ()) < top:  # too short a palette: the visualizer's own colours
        meta.pop('palette', None)
    vis.dataset_meta = meta
    vis.add_datasample('det', img_rgb, result, draw_gt=False, pred_score_thr=score_thr, show=False)
    return vis.get_image()


def figure(
    rows: List[Tuple[str, dict]], img_bgr: np.ndarray, method: str, score_thr: float, path: str, dpi: int = 72
) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    img_rgb = img_bgr[:, :, ::-1].copy()
    ncols = 2 + max([len(r['panels']) for _, r in rows] + [1])
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.3 * ncols, 2.7 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    for row, (title, r) in enumerate(rows):
        meta = r['result'].metainfo
        pad = tuple(r['inputs'].shape[-2:])
        ax = axes[row, 0]
        ax.imshow(draw_detections(r['model'], img_rgb, r['result'], score_thr))
        ax.set_title(f'{textwrap.fill(title, 36, break_on_hyphens=False)}\ndetections ≥ {score_thr}', fontsize=6)
        ax = axes[row, 1]
        ax.imshow(img_rgb)
        if r['cam'] is not None:
            ax.imshow(to_image_frame(r['cam'], meta, pad), cmap='jet', alpha=0.5, vmin=0, vmax=1)
            c = r['chosen']
            x1, y1, x2, y2 = c['box']
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color='white', lw=1))
            name = r['model'].dataset_meta.get('classes', ())
            label = name[c['label']] if c['label'] < len(name) else c['label']
            score = f'{c["score"]:.2f}' if c['index'] is not None else 'not detected'
            ax.set_title(f'{method}: {label} {score}', fontsize=7)
        elif r['chosen'] is not None:
            ax.set_title(f'{method}: the box is not detected', fontsize=7)
        else:
            ax.set_title(f'{method}: no detection ≥ {score_thr}', fontsize=7)
        if not r['panels']:
            axes[row, 2].text(0.5, 0.5, 'no attention', ha='center', va='center', fontsize=8)
        for col, p in enumerate(r['panels'], start=2):
            ax = axes[row, col]
            if p['heat'] is not None:
                ax.imshow(img_rgb, alpha=0.35)
                ax.imshow(to_image_frame(p['heat'].numpy(), meta, pad), cmap='viridis', alpha=0.75)
            else:
                ax.text(0.5, 0.5, 'channel attention only', ha='center', va='center', fontsize=7)
            ax.set_title(f'{p["stage"]} {p["kind"]} {p["what"]}\n{p["top"]}', fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line
def run(args) -> List[str]:
    if args.method not in METHODS:
        raise ValueError(f'vis_attention: --method {args.method!r}; allowed: {", ".join(METHODS)}')
    images = [read_image(p) for p in args.images]  # every path checked before any model work
    models = [
        (
            osp.splitext(osp.basename(args.config))[0],
            load_detector(args.config, args.checkpoint, args.device, args.unsafe_load),
        )
    ]
    if not attention_modules(models[0][1]) and not args.no_attention_panels:
        raise ValueError(
            f'vis_attention: {args.config!r} builds a model without cbam_det attention modules, so there are no '
            f'attention panels to draw; give it as --baseline of an attention model, or pass --no-attention-panels'
        )
    if args.baseline:
        models.append(
            (
                'baseline: ' + osp.splitext(osp.basename(args.baseline[0]))[0],
                load_detector(*args.baseline, args.device, args.unsafe_load),
            )
        )
    for _, model in models:  # every target layer exists before any image is processed
        for path in args.target_layers or []:
            get_layer(model, path)
    os.makedirs(args.out_dir, exist_ok=True)
    written = []
    for path, img in zip(args.images, images):
        rows, target = [], None
        for title, model in models:  # the baseline explains the attention model's detection
            layers = args.target_layers or [default_target_layer(model)]
            r = analyse(model, img, layers, args.method, args.score_thr, target)
            target = target or r['chosen']
            if args.no_attention_panels:
                r['panels'] = []
            r['model'] = model
            rows.append((title, r))
        out = osp.join(args.out_dir, osp.splitext(osp.basename(path))[0] + '.png')
        figure(rows, img, args.method, args.score_thr, out, args.dpi)
        written.append(out)
        print(out, flush=True)
    return written


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('images', nargs='+', metavar='IMAGE')
    parser.add_argument('--out-dir', required=True)
    parser.add_argument('--baseline', nargs=2, metavar=('CONFIG', 'CHECKPOINT'), help='a model to show beside')
    parser.add_argument('--target-layers', nargs='+', help='module paths for the CAM (default: the last stage)')
    parser.add_argument('--method', default='gradcam', help=f'one of {", ".join(METHODS)}')
    parser.add_argument('--score-thr', type=float, default=0.3)
    parser.add_argument('--no-attention-panels', action='store_true', help='detections and CAM only')
    parser.add_argument('--dpi', type=int, default=72, help='resolution of the PNG (72: ~2.3 inch panels)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--unsafe-load', action='store_true', help='unpickle checkpoints fully (trusted files only)')
    return parser.parse_args(argv)


if __name__ == '__main__':
    try:
        run(parse_args())
    except (FileNotFoundError, ValueError) as e:
        sys.exit(str(e))
