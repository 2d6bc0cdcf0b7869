"""Attention added to a detector that is already trained (init_mode='identity'): the detector's
detections are unchanged at step 0, the checkpoint check names a gate-function mismatch, and a
run that loaded the plain checkpoint resumes bit-identically."""

import os.path as osp

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config, ConfigDict
from mmengine.dataset import pseudo_collate

from cbam_det import CBAM
from cbam_det.engine.attention_keys import attention_key_mismatch
from cbam_det.utils import no_pretrained

from . import numerics
from .helpers import REPO
from .test_configs import demo_dataset

PLAIN = osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r50w16_fpn_demo.py')
PAPER = osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r50w16-cbam_fpn_demo-ft.py')
IDENTITY = osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r50w16-cbam-identity_fpn_demo-ft.py')


def build(path: str, state=None):
    cfg = Config.fromfile(path)
    # every proposal's best class is kept (no score threshold): a random head's scores sit near
    # 1/81, and whether any clears 0.05 depends on the seed; the comparison needs detections
    cfg.model.test_cfg.rcnn.score_thr = 0.0
    torch.manual_seed(numerics.seed())
    model = MODELS.build(ConfigDict(no_pretrained(cfg.model.to_dict())))
    model.init_weights()
    if state is None:  # a "trained" detector: every BN away from its init, so the attention input is real
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d) and m.affine:
                    m.weight.normal_(1, 0.3)
                    m.bias.normal_(0, 0.3)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and missing and all('.cbam.' in k for k in missing)
    return model.eval()


def detections(model, batch):
    with torch.no_grad():
        inst = model.test_step(batch)[0].pred_instances
    return inst.bboxes, inst.scores, inst.labels


def test_identity_cbam_added_to_a_trained_detector_keeps_its_detections(tiny_demo_data):
    """The acceptance test: a trained plain detector, CBAM added with init_mode='identity' and the
    plain weights loaded, gives the same detections at step 0 (and the same backbone features to
    float32 rounding); with the paper's initialisation the detections change."""
    plain = build(PLAIN)
    state = plain.state_dict()
    batch = pseudo_collate([demo_dataset(Config.fromfile(PLAIN), tiny_demo_data, 'val')[i] for i in (0, 1)])
    want = detections(plain, batch)
    assert len(want[0]) > 0
    identity = build(IDENTITY, state)
    assert all(m.init_mode == 'identity' for m in identity.modules() if isinstance(m, CBAM))
    got = detections(identity, batch)
    assert torch.equal(got[2], want[2])
    numerics.assert_close(got[0], want[0], depth=50)
    numerics.assert_close(got[1], want[1], depth=50)
    x = identity.data_preprocessor(batch, False)['inputs']
    with torch.no_grad():
        for a, b in zip(identity.extract_feat(x), plain.extract_feat(x)):
            numerics.assert_close(a, b, depth=50)
    paper = build(PAPER, state)
    with torch.no_grad():
        changed = [float((a - b).abs().max()) for a, b in zip(paper.extract_feat(x), plain.extract_feat(x))]
    assert min(changed) > 1e-2  # the paper's init scales every residual branch by about 0.25 at step 0


def test_checkpoint_check_names_a_gate_function_mismatch():
    """An identity-trained checkpoint into a config with the papers' gates (or the reverse) is
    refused with the init_mode that matches; a plain checkpoint into either is the normal
    'starts from its initialisation' (logged); a resumed identity run matches its checkpoint."""
    paper = CBAM(16).state_dict()
    identity = CBAM(16, init_mode='identity').state_dict()

    def keys(state, prefix='backbone.layer1.0.cbam.'):
        return ['backbone.layer1.0.conv1.weight'] + [prefix + k for k in state]

    msg = attention_key_mismatch(keys(paper), keys(identity), resuming=False)
    assert msg and "trained with init_mode='identity'" in msg and "set init_mode='identity'" in msg
    msg = attention_key_mismatch(keys(identity), keys(paper), resuming=False)
    assert msg and "set init_mode='scratch'" in msg
    assert attention_key_mismatch(keys(identity), ['backbone.layer1.0.conv1.weight'], resuming=False) is None
    assert attention_key_mismatch(keys(identity), keys(identity), resuming=True) is None
    assert 'must match' in attention_key_mismatch(keys(identity), ['backbone.layer1.0.conv1.weight'], resuming=True)


@pytest.mark.slow
def test_a_run_that_added_identity_cbam_to_a_trained_detector_resumes_exactly(tiny_demo_data, tmp_path):
    """tools/train.py with load_from a plain checkpoint and identity CBAM, killed after iteration 4
    and resumed, ends bit-identical to an uninterrupted run."""
    from .test_resume import final_state, max_relative_difference, train, write_config

    plain = build(PLAIN)
    ckpt = tmp_path / 'plain.pth'
    torch.save(dict(state_dict=plain.state_dict(), meta=dict()), ckpt)
    config = write_config(tmp_path, tiny_demo_data, 'iter', 0)
    text = (
        open(config)
        .read()
        .replace(repr(osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r50w16-cbam_fpn_demo.py')), repr(IDENTITY))
    )
    text += f'\nload_from = {str(ckpt)!r}\nparam_scheduler = []\n'
    open(config, 'w').write(text)
    ref = str(tmp_path / 'uninterrupted')
    proc = train(config, ref)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'attention parameters/buffers are not in the loaded checkpoint' in proc.stdout + proc.stderr
    work = str(tmp_path / 'killed')
    assert train(config, work, KILL_AFTER='iter_4').returncode == -9
    proc = train(config, work, resume=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert max_relative_difference(final_state(work, 'iter_8.pth'), final_state(ref, 'iter_8.pth')) == 0.0
