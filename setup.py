"""Install cbam_det (the mmdet stack itself is installed by tools/setup_env.sh)."""
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
    python_requires='>=3.9,<3.13',
    # The tested pins are in requirements/runtime.txt; mmcv 2.1.0 must be built with ops
    # (tools/setup_env.sh does it), so it is only required here, not pinned.
    install_requires=['mmdet>=3.0,<3.4', 'mmcv>=2.0.0rc4,<2.2.0', 'mmengine>=0.7.1,<1.0'],
    license='Apache-2.0',
)
