"""A real install: sdist -> wheel with ``python -m build``, installed into an empty target with
no dependencies, used from outside the checkout. The wheel must carry the kernel source and
declare nothing that could make pip replace the user's torch or mmcv."""

import os
import os.path as osp
import subprocess
import sys
import zipfile

import torch

from cbam_det import CBAM

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

RUN = r"""
import json, os, sys
import torch
import cbam_det
from cbam_det import CBAM
from cbam_det.ops import gate_ext
assert cbam_det.__file__.startswith(sys.argv[1]), cbam_det.__file__
torch.manual_seed(0)
m = CBAM(32, reduction=4)
x = torch.randn(2, 32, 9, 13, requires_grad=True)
y = m(x)
(y * y).sum().backward()
print(json.dumps(dict(kernels=gate_ext() is not None, y=y.double().sum().item(), dx=x.grad.double().sum().item(),
                      dw=sum(p.grad.double().abs().sum().item() for p in m.parameters()))))
"""


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / 'dist'
    subprocess.run(
        [sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(dist), REPO],
        check=True,
        capture_output=True,
        text=True,
    )
    wheel = next(dist.glob('cbam_det-*.whl'))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
    for source in ('gates.cpp', 'bam.cpp', 'common.h'):
        assert f'cbam_det/ops/csrc/{source}' in names, source
    assert not [line for line in meta.splitlines() if line.startswith('Requires-Dist')], meta

    site = tmp_path / 'site'
    subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '--target', str(site), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    env = dict(os.environ, PYTHONPATH=str(site), CBAM_DET_EXT_DIR=str(tmp_path / 'ext'))
    out = subprocess.run(
        [sys.executable, '-c', RUN, str(site)], cwd=str(tmp_path), env=env, check=True, capture_output=True, text=True
    )
    got = __import__('json').loads(out.stdout.strip().splitlines()[-1])

    torch.manual_seed(0)  # the same step here, with the checkout's package
    m = CBAM(32, reduction=4)
    x = torch.randn(2, 32, 9, 13, requires_grad=True)
    y = m(x)
    (y * y).sum().backward()
    assert got['kernels'] == (os.environ.get('CBAM_DET_NO_EXT') != '1')
    assert abs(got['y'] - y.double().sum().item()) <= 1e-4 * y.double().abs().sum().item()
    assert abs(got['dx'] - x.grad.double().sum().item()) <= 1e-4 * x.grad.double().abs().sum().item()
    dw = sum(p.grad.double().abs().sum().item() for p in m.parameters())
    assert abs(got['dw'] - dw) <= 1e-4 * dw
