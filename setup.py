"""Install cbam_det into an environment that already holds an mmdet stack.

No dependency is declared on purpose: the stack's distributions have other names on each
line (``mmdet`` / ``onedl-mmdetection``, ``mmcv`` / ``onedl-mmcv``) and mmcv must be built
with ops, so declaring any of them would let pip replace the user's torch or mmcv. The
tested pins are in ``requirements/{onedl,upstream}.txt``; ``tools/setup_env.sh`` installs them.
"""

import os.path as osp

from setuptools import find_packages, setup


def read_version() -> str:
    scope: dict = {}
    with open(osp.join(osp.dirname(__file__), 'cbam_det', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='cbam_det',
    version=read_version(),
    description='CBAM and BAM attention modules as MMDetection 3.x plugins',
    long_description=open(osp.join(osp.dirname(__file__), 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['cbam_det', 'cbam_det.*']),
    # the fused CPU kernels are compiled from this source on first use
    package_data={'cbam_det.ops': ['csrc/*.cpp', 'csrc/*.h']},
    python_requires='>=3.9',
    install_requires=[],
    license='Apache-2.0',
)
