"""ONNX export (the mmdeploy route) of backbones with CBAM, SE and BAM: while tracing or exporting,
the modules take their plain PyTorch path; onnxruntime reproduces eager within 1e-4."""

import inspect

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS

ort = pytest.importorskip('onnxruntime', reason='onnxruntime is pinned in requirements/tests.txt')

MODELS_TO_EXPORT = {
    'mmdet ResNet-50 + CBAM plugins': dict(
        type='ResNet',
        depth=50,
        base_channels=16,
        zero_init_residual=False,
        plugins=[dict(cfg=dict(type='CBAM'), stages=(True,) * 4, position='after_conv3')],
    ),
    'AttnResNet-50 + SE (fused with the BN)': dict(
        type='AttnResNet', depth=50, base_channels=16, zero_init_residual=False, attention=dict(type='SE')
    ),
    'AttnResNet-50 + CBAM + BAM': dict(
        type='AttnResNet',
        depth=50,
        base_channels=16,
        zero_init_residual=False,
        attention=dict(type='CBAM'),
        bam=dict(type='BAM'),
    ),
}


def export(model: torch.nn.Module, x: torch.Tensor, path: str) -> None:
    kwargs = dict(input_names=['x'], opset_version=17)
    if 'dynamo' in inspect.signature(torch.onnx.export).parameters:
        kwargs['dynamo'] = False  # the TorchScript-based exporter (mmdeploy's route)
    torch.onnx.export(model, (x,), path, **kwargs)


@pytest.mark.parametrize('name', list(MODELS_TO_EXPORT))
def test_onnx_export_runs_in_onnxruntime_like_eager(name, tmp_path):
    torch.manual_seed(0)
    model = MODELS.build(MODELS_TO_EXPORT[name])
    model.init_weights()
    with torch.no_grad():  # non-trivial spatial gates (the official init puts γ = 0 there)
        for m in model.modules():
            if type(m).__name__ == 'SpatialGate':
                m.bn.weight.fill_(0.5)
    model.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        want = model(x)
    path = str(tmp_path / 'model.onnx')
    export(model, x, path)
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = sess.run(None, {'x': x.numpy()})
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4 * float(w.abs().max()))


def test_jit_trace_matches_eager():
    torch.manual_seed(0)
    model = MODELS.build(MODELS_TO_EXPORT['mmdet ResNet-50 + CBAM plugins']).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), check_trace=False)
        for g, w in zip(traced(x), model(x)):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
