"""Convert an mmdet detector (with cbam_det attention) to ONNX Runtime with mmdeploy's Python API,
dynamic input shapes, and check that onnxruntime reproduces the PyTorch model's detections.

    .venv/deploy/bin/python tools/deploy/ort_check.py configs/faster_rcnn/faster-rcnn_r50-cbam_fpn_1x_coco.py \
        --images data/demo/VOCdevkit/VOC2007/JPEGImages/val_0000{0,1}.jpg --work-dir work_dirs/deploy/frcnn

Runs in the environment of ``make deploy-env`` (upstream stack + mmdeploy 1.3.1 + onnxruntime 1.15.1 with
mmdeploy's custom-op library). Nothing is downloaded: the model is built with random weights, and its
final classification layers are drawn anew so that their logits have a standard deviation of 1, 2, 4
or 8 and a mean of 0 to -6 on the first image (the first setting that gives ``--min-dets`` to
``--max-dets`` detections above ``--score-thr``): the comparison then has confident detections with
well-separated scores. A head with one sigmoid per class (YOLOX) keeps one class live (the others at
σ(−20)): mmdeploy's NMS runs over every (box, class) pair where mmdet's takes each box's best class,
and with one live class the two are the same. Each image is fed as it is and as a
crop of another aspect ratio, so the exported graph runs at several input shapes.

Check, per image: the same detections above ``--score-thr`` (each PyTorch detection has an
onnxruntime one of the same label, its score within ``--score-tol`` and its box within ``--px``
pixels, and the other way round). Two kinds of detection are decided by float32 rounding, not by
the model, and are counted apart (see :func:`match`): exact score ties (compared by count), and
near-ties at a cut-off, a detection whose score is within ``--score-tol`` of ``--score-thr`` or of
the lowest score kept where the ``keep_top_k`` cap was reached (its partner may be just across the
cut on the other side). A randomly initialised two-stage detector also takes decisions before the
final cut by rounding (its RPN's top-k over thousands of near-equal objectness scores, an NMS IoU
near its threshold), so a confident detection can differ too; such a detection is found by the
PyTorch model itself: ``--perturbations`` runs add noise of float32 rounding's size (relative
``--perturbation`` to the backbone's input) and a detection the PyTorch model loses or gains under
that noise is unstable (``unstable_a``, ``unstable_b``). Everything else must match. Prints one
``ORT_CHECK {json}`` line; exit 1 when it fails.
"""

import argparse
import contextlib
import json
import os
import os.path as osp
import sys
from typing import List

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

CLASSIFIERS = ('fc_cls', 'cls_convs', 'conv_cls', 'conv_obj')  # the last layers of the score branches
LOGIT_STDS = (1.0, 2.0, 4.0, 8.0)  # tried in turn: the spread of the classification logits ...
LOGIT_MEANS = (0.0, -2.0, -4.0, -6.0)  # ... and their offset (lowers sigmoid scores; softmax ignores it)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('--images', nargs='+', required=True)
    p.add_argument('--work-dir', required=True)
    p.add_argument('--deploy-cfg', default='configs/deploy/detection_onnxruntime_dynamic.py')
    p.add_argument('--score-thr', type=float, default=0.3)
    p.add_argument('--score-tol', type=float, default=1e-3)
    p.add_argument('--px', type=float, default=1.0)
    p.add_argument('--min-dets', type=int, default=3)
    p.add_argument('--max-dets', type=int, default=1000)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--perturbations', type=int, default=3, help='PyTorch runs with rounding-size input noise')
    p.add_argument('--perturbation', type=float, default=1e-6, help="the noise's relative size (float32 eps: 1.2e-7)")
    args = p.parse_args()
    if args.perturbations < 0:
        p.error(f'--perturbations: {args.perturbations}; allowed: 0 or more')
    if not 0 < args.perturbation <= 1e-4:
        p.error(f'--perturbation: {args.perturbation}; allowed: (0, 1e-4] (the size of rounding, not of a change)')
    return args


def detector_cfg(model_cfg):
    """The detector's own config (inside AttentionInserted's ``detector``)."""
    return model_cfg.detector if model_cfg.get('type') == 'AttentionInserted' else model_cfg


def post_processing(model_cfg) -> dict:
    """mmdeploy's post-processing set from the detector's own test_cfg (score, NMS IoU, kept boxes);
    a detector without ``max_per_img`` (YOLOX) gets mmdeploy's 100 in its test_cfg too."""
    test_cfg = detector_cfg(model_cfg).test_cfg
    test_cfg = test_cfg.get('rcnn', test_cfg)
    test_cfg.setdefault('max_per_img', 100)
    return dict(
        score_threshold=test_cfg.get('score_thr', 0.05),
        iou_threshold=test_cfg.nms.get('iou_threshold', 0.5),
        keep_top_k=test_cfg.max_per_img,
    )


def crops(images: List[str], work_dir: str) -> List[str]:
    """Each image and a crop of it to 10/16 of its height (another input shape after resizing)."""
    import mmcv

    out = []
    for path in images:
        img = mmcv.imread(path)
        crop = osp.join(work_dir, 'crop_' + osp.basename(path))
        mmcv.imwrite(img[: max(1, img.shape[0] * 10 // 16)], crop)
        out += [path, crop]
    return out


def detections(sample, thr: float, cap: int = 10**9):
    """(boxes, scores, labels) above ``thr``, at most the ``cap`` best (mmdeploy's keep_top_k; mmdet's
    YOLOX keeps all its NMS survivors)."""
    inst = sample.pred_instances
    order = torch.argsort(inst.scores, descending=True)[:cap]
    order = order[inst.scores[order] > thr]
    return tuple(t[order].detach().cpu().numpy() for t in (inst.bboxes, inst.scores, inst.labels))


@contextlib.contextmanager
def perturbed_input(model: torch.nn.Module, size: float, seed: int):
    """Inside: ``model``'s backbone sees its input × (1 + ``size``·ξ), ξ standard normal drawn
    from ``seed``: a change of float32 rounding's order, as a different kernel's summation order
    makes."""
    backbone = next((m for n, m in model.named_modules() if n.split('.')[-1] == 'backbone'), None)
    if backbone is None:
        raise SystemExit(f'ort_check: no backbone in {type(model).__name__} to perturb')
    gen = torch.Generator().manual_seed(seed)

    def noisy(_m, args):
        x = args[0]
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x.device, x.dtype)
        return (x * (1 + size * noise),) + tuple(args[1:])

    handle = backbone.register_forward_pre_hook(noisy)
    try:
        yield
    finally:
        handle.remove()


def _tie_groups(scores, labels, tol: float = 1e-6) -> dict:
    """(label, score) → how many detections share it with another one (exact ties within ``tol``)."""
    groups: dict = {}
    for s, lab in zip(scores, labels):
        same = np.abs(scores - s) <= tol
        if same.sum() > 1:
            key = (int(lab), round(float(s), 5))
            groups[key] = groups.get(key, 0) + 1
    return groups


def _partnered(box, score, label, dets, score_tol: float, px: float) -> bool:
    """Whether ``dets`` hold a detection of ``label`` with its score and box within the tolerances."""
    boxes, scores, labels = dets
    same = (labels == label) & (np.abs(scores - score) <= score_tol)
    return bool(same.any() and (np.abs(boxes[same] - box).max(1) <= px).any())


def match(a, b, score_tol: float, px: float, thr: float = 0.0, cap: int = 10**9, perturbed=()) -> dict:
    """Greedy one-to-one match of detections a to b (same label, score and box within the tolerances).

    Detections left over on either side are explained, not failed, when they are
    - exact score ties of the same label in equal numbers on both sides: among equal scores (a
      padded, constant image region gives many) NMS keeps an order-dependent subset, and PyTorch
      and onnxruntime order ties differently (``tied``);
    - near-ties at a cut-off: the score is within ``score_tol`` of ``thr`` or, on a side that holds
      ``cap`` detections, of its lowest kept score; rounding decides on which side of the cut its
      partner fell (``near_a``, ``near_b``);
    - unstable: ``perturbed`` holds the detections of a's model under rounding-size noise; a
      detection of a that one of them lacks, or one of b that one of them has, is decided by
      rounding before the last cut (``unstable_a``, ``unstable_b``).
    ``unexplained`` counts the rest, which fail the check."""
    (ba, sa, la), (bb, sb, lb) = a, b
    used = np.zeros(len(sb), dtype=bool)
    done = np.zeros(len(sa), dtype=bool)
    matched, box_diff, score_diff = 0, 0.0, 0.0
    for i in np.argsort(-sa):
        best, best_d = -1, None
        for j in range(len(sb)):
            if used[j] or lb[j] != la[i] or abs(sb[j] - sa[i]) > score_tol:
                continue
            d = float(np.abs(bb[j] - ba[i]).max())
            if d <= px and (best_d is None or d < best_d):
                best, best_d = j, d
        if best >= 0:
            used[best] = True
            done[i] = True
            matched += 1
            box_diff = max(box_diff, best_d)
            score_diff = max(score_diff, float(abs(sb[best] - sa[i])))
    ties_a = _tie_groups(sa[~done], la[~done]) if (~done).any() else {}
    ties_b = _tie_groups(sb[~used], lb[~used]) if (~used).any() else {}
    tied = int(sum(ties_a.values())) if ties_a == ties_b and sum(ties_a.values()) == (~done).sum() else 0
    cuts = [thr] + [float(s.min()) for s in (sa, sb) if len(s) >= cap]

    def near(score) -> bool:
        return any(abs(float(score) - c) <= score_tol for c in cuts)

    left_a = [i for i in np.flatnonzero(~done) if not tied]
    left_b = [j for j in np.flatnonzero(~used) if not tied]
    near_a = sum(near(sa[i]) for i in left_a)
    near_b = sum(near(sb[j]) for j in left_b)
    unstable_a = sum(
        not near(sa[i]) and any(not _partnered(ba[i], sa[i], la[i], p, score_tol, px) for p in perturbed)
        for i in left_a
    )
    unstable_b = sum(
        not near(sb[j]) and any(_partnered(bb[j], sb[j], lb[j], p, score_tol, px) for p in perturbed) for j in left_b
    )
    unexplained = len(left_a) + len(left_b) - near_a - near_b - unstable_a - unstable_b
    return dict(
        matched=matched,
        tied=tied,
        near_a=int(near_a),
        near_b=int(near_b),
        unstable_a=int(unstable_a),
        unstable_b=int(unstable_b),
        unexplained=int(unexplained),
        cut_offs=[round(c, 6) for c in cuts],
        box_diff=box_diff,
        score_diff=score_diff,
    )


def main() -> int:
    args = parse_args()
    from mmdeploy.apis import torch2onnx
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.utils import load_config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import cbam_det  # noqa: F401  (only registration)
    from cbam_det.utils import no_pretrained

    register_all_modules()
    os.makedirs(args.work_dir, exist_ok=True)
    model_cfg = Config.fromfile(args.config)
    model_cfg.model = Config(no_pretrained(model_cfg.model.to_dict()))
    deploy_cfg = load_config(args.deploy_cfg)[0]
    deploy_cfg.codebase_config.post_processing.update(post_processing(model_cfg.model))
    dp_cfg = detector_cfg(model_cfg.model).get('data_preprocessor', {})
    keep_dp = lambda _: dict(dp_cfg)  # noqa: E731  (AttentionInserted keeps it inside the detector)
    images = crops(args.images, args.work_dir)

    torch.manual_seed(args.seed)
    model = MODELS.build(model_cfg.model)
    model.init_weights()
    heads = [(n, m) for n, m in model.named_modules() if any(k in n for k in CLASSIFIERS)]
    heads = [(n, m) for n, m in heads if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    if not heads:
        raise SystemExit(f'ort_check: no classification layer ({", ".join(CLASSIFIERS)}) in {args.config}')
    task = build_task_processor(model_cfg, deploy_cfg, 'cpu')
    ckpt = osp.join(args.work_dir, 'random.pth')
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    rms = {}  # the RMS of each classification layer's input on the first image

    def hook(name):
        def record(_m, inp, _out) -> None:  # returns None: the output stays as it is
            rms.setdefault(name, float(inp[0].float().pow(2).mean().sqrt()))

        return record

    torch_model = task.build_pytorch_model(ckpt)
    handles = [m.register_forward_hook(hook(n)) for n, m in torch_model.named_modules() if n in dict(heads)]
    with torch.no_grad():
        torch_model.test_step(task.create_input(images[0], None)[0])
    for h in handles:
        h.remove()
    chosen = None
    for std, mean in ((s, m) for s in LOGIT_STDS for m in LOGIT_MEANS):  # until confident, few detections
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for name, m in heads:
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std / (max(rms[name], 1e-6) * fan_in**0.5))
                if m.bias is not None:
                    m.bias.fill_(mean)
                if 'conv_cls' in name:  # sigmoid classes (YOLOX): one class live, so no box has two labels
                    m.weight[1:].zero_()
                    m.bias[1:].fill_(-20.0)
        torch.save(dict(state_dict=model.state_dict()), ckpt)
        torch_model = task.build_pytorch_model(ckpt)
        with torch.no_grad():
            n = len(detections(torch_model.test_step(task.create_input(images[0], None)[0])[0], args.score_thr)[1])
        if args.min_dets <= n <= args.max_dets:
            chosen = dict(std=std, mean=mean)
            break
    if chosen is None:
        raise SystemExit(
            f'ort_check: no logit setting gives {args.min_dets}-{args.max_dets} detections above {args.score_thr}'
        )

    torch2onnx(images[0], args.work_dir, 'end2end.onnx', deploy_cfg, model_cfg, ckpt, 'cpu')
    onnx_file = osp.join(args.work_dir, 'end2end.onnx')
    backend = task.build_backend_model([onnx_file], data_preprocessor_updater=keep_dp)
    report = dict(config=args.config, logits=chosen, onnx_mb=round(osp.getsize(onnx_file) / 2**20, 1), images=[])
    ok = True
    for path in images:
        data, inputs = task.create_input(path, None, data_preprocessor=torch_model.data_preprocessor)
        raw, _ = task.create_input(path, None)
        cap = deploy_cfg.codebase_config.post_processing.keep_top_k
        with torch.no_grad():
            want = detections(torch_model.test_step(raw)[0], args.score_thr, cap)
            got = detections(backend.test_step(raw)[0], args.score_thr, cap)
            perturbed = []
            for k in range(args.perturbations):
                with perturbed_input(torch_model, args.perturbation, args.seed + 1 + k):
                    perturbed.append(detections(torch_model.test_step(raw)[0], args.score_thr, cap))
        m = match(want, got, args.score_tol, args.px, args.score_thr, cap, perturbed)
        ok &= m['unexplained'] == 0
        report['images'].append(
            dict(image=osp.basename(path), input_shape=list(inputs.shape), torch=len(want[1]), ort=len(got[1]), **m)
        )
    report['ok'] = bool(ok)
    print('ORT_CHECK ' + json.dumps(report))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
