"""A Faster R-CNN with CBAM builds from the demo config and runs a loss and a predict step on CPU."""

import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config

from cbam_det import CBAM
from tests.helpers import DEMO_CONFIG


def test_faster_rcnn_cbam_loss_and_predict():
    cfg = Config.fromfile(DEMO_CONFIG)
    # mmdet's ResNet zero-initialises every block's last BN (zero_init_residual=True), so the
    # attention input is exactly 0 at step 0 and no gradient reaches it yet; turn that off here
    cfg.model.backbone.zero_init_residual = False
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    cbams = [m for m in model.backbone.modules() if isinstance(m, CBAM)]
    assert len(cbams) == 16
    assert all(float(m.spatial_gate.bn.weight) == 0 for m in cbams)  # official init: spatial gate at 0.5
    # ...which by design gives the 7x7 conv no gradient at step 0; use a non-zero gamma to test the path
    for m in cbams:
        torch.nn.init.constant_(m.spatial_gate.bn.weight, 0.5)
    packed = demo_mm_inputs(2, [[3, 96, 128], [3, 128, 96]], num_items=[3, 2], num_classes=3)
    data = model.data_preprocessor(packed, True)

    model.train()
    losses = model(**data, mode='loss')
    assert {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'acc'} <= set(losses)
    total = sum(v.sum() for k, v in losses.items() if 'loss' in k for v in (v if isinstance(v, list) else [v]))
    assert torch.isfinite(total)
    total.backward()
    # the backward pass reaches every parameter of every attention module
    for i, m in enumerate(cbams):
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f'CBAM {i}: {name}'

    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed, False), mode='predict')
    assert len(results) == 2
    for r in results:
        inst = r.pred_instances
        assert inst.bboxes.shape[1] == 4 and inst.bboxes.shape[0] == inst.scores.shape[0] == inst.labels.shape[0]
        assert inst.bboxes.shape[0] <= cfg.model.test_cfg.rcnn.max_per_img
        if len(inst.labels):
            assert int(inst.labels.max()) < 3
