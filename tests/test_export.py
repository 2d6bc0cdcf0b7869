"""Export of backbones with CBAM, SE and BAM by every exporter of current PyTorch: the legacy
TorchScript-based ONNX exporter (mmdeploy's route), the dynamo-based ONNX exporter (the default
of ``torch.onnx.export`` from torch 2.9, needs onnxscript) and ``torch.export`` (its
``ExportedProgram.module()`` run). While tracing, exporting or compiling the modules take their
plain PyTorch path; onnxruntime and the exported program reproduce eager within 1e-4."""

import inspect

import pytest
import torch
from mmdet.registry import MODELS

from . import numerics

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


EXPORTERS = ('torchscript', 'dynamo', 'torch_export')


def _dynamo_available() -> str:
    """'' where torch.onnx.export(dynamo=True) works here, else why not."""
    if 'dynamo' not in inspect.signature(torch.onnx.export).parameters:
        return f'torch {torch.__version__} has no dynamo ONNX exporter'
    if tuple(int(v) for v in torch.__version__.split('.')[:2]) < (2, 6):
        # checked: torch 2.5.1's exporter with onnxscript 0.7.2 fails on a plain Conv2d + BatchNorm2d
        # (aten._native_batch_norm_legit_no_training), before any attention module
        return f'torch {torch.__version__}: its dynamo ONNX exporter does not convert a plain BatchNorm2d'
    try:
        import onnxscript  # noqa: F401
    except ImportError as e:
        return f'onnxscript is missing ({e}); it is pinned in requirements/tests.txt'
    return ''


def export(model: torch.nn.Module, x: torch.Tensor, path: str, exporter: str = 'torchscript') -> None:
    kwargs = dict(input_names=['x'])
    if 'dynamo' in inspect.signature(torch.onnx.export).parameters:
        kwargs['dynamo'] = exporter == 'dynamo'
    torch.onnx.export(model, (x,), path, opset_version=17 if exporter == 'torchscript' else 18, **kwargs)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(numerics.seed())
    model = MODELS.build(MODELS_TO_EXPORT[name])
    model.init_weights()
    with torch.no_grad():  # non-trivial spatial gates (the official init puts γ = 0 there)
        for m in model.modules():
            if type(m).__name__ == 'SpatialGate':
                m.bn.weight.fill_(0.5)
    model.eval()  # mmdet's ResNet.train returns None: no chaining
    return model


def _close(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g = g.detach().numpy() if isinstance(g, torch.Tensor) else g
        numerics.assert_close(torch.as_tensor(g), w, depth=50)


@pytest.mark.parametrize('exporter', EXPORTERS)
@pytest.mark.parametrize('name', list(MODELS_TO_EXPORT))
def test_export_runs_like_eager(name, exporter, tmp_path):
    if exporter == 'dynamo' and _dynamo_available():
        pytest.skip(_dynamo_available())
    model = _model(name)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        want = model(x)
    if exporter == 'torch_export':
        ep = torch.export.export(model, (x,))
        with torch.no_grad():
            _close(ep.module()(x), want)
        return
    path = str(tmp_path / 'model.onnx')
    export(model, x, path, exporter)
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    _close(sess.run(None, {sess.get_inputs()[0].name: x.numpy()}), want)


def test_jit_trace_matches_eager():
    torch.manual_seed(numerics.seed())
    model = MODELS.build(MODELS_TO_EXPORT['mmdet ResNet-50 + CBAM plugins'])
    model.eval()  # mmdet's ResNet.train returns None: no chaining
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), check_trace=False)
        for g, w in zip(traced(x), model(x)):
            numerics.assert_close(g, w, depth=50)


def test_export_runs_no_python_autograd_function(monkeypatch, tmp_path):
    """While exporting, CBAM runs its equations as plain operations: a Python autograd function
    under the TorchScript-based exporter becomes a prim::PythonOp that the exporter must inline,
    and beside mmdeploy's marks (autograd functions with a symbolic) that failed with "Dangling
    node reference" (mmdeploy#2102, YOLOX + CBAM; tests/test_deploy.py converts it)."""
    from cbam_det import CBAM
    from cbam_det.kernels import lean

    def refuse(*args):
        raise AssertionError('a lean autograd function ran while exporting')

    for fn in (lean.ChannelPool, lean.GatedChannelPool, lean.ApplyGates):
        monkeypatch.setattr(fn, 'apply', refuse)
    m = CBAM(16)
    m.eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        export(m, x, str(tmp_path / 'cbam.onnx'))
        want = m.reference(x)
    sess = ort.InferenceSession(str(tmp_path / 'cbam.onnx'), providers=['CPUExecutionProvider'])
    _close(sess.run(None, {sess.get_inputs()[0].name: x.numpy()}), [want])
