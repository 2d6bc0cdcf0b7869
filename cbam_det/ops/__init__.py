"""The C++ CPU kernels of cbam_det's op families, compiled on first use: one extension module per
family, from ``csrc/<family>.cpp`` (with the shared ``csrc/common.h``); a new ``.cpp`` there is a
new family, found without a list.

:func:`ext` returns a family's compiled module, :func:`gate_ext` every family's (the first), or
None when they cannot be used: the
environment variable ``CBAM_DET_NO_EXT=1`` is set, or compiling failed (no C++ compiler:
a warning says why once). Callers then use the PyTorch implementation, which gives the
same results, only slower. The kernels are built for the instruction set named by
``CBAM_DET_CPU_ARCH`` (gcc's ``-march``: default ``native``, this processor's; e.g.
``x86-64-v2`` for a baseline without AVX, ``x86-64-v3`` for AVX2 without AVX-512); a named
target that does not compile raises instead of falling back. The build is cached per source,
flags (the target among them), torch and Python version and processor under
``$CBAM_DET_EXT_DIR`` (default ``$CBAM_DET_CACHE/ext``, ``~/.cache/cbam_det/ext``);
``make setup`` compiles it ahead (``python -m cbam_det.ops``). The source ships inside the package (wheels and sdists
included), so a non-editable install compiles it the same way.
"""

import glob
import hashlib
import os
import os.path as osp
import platform
import re
import sys
import warnings
from typing import List, Optional

import torch

from .. import config

__all__ = ['FAMILIES', 'ext', 'gate_ext', 'ext_ready', 'build_dir', 'cpu_arch']

_CSRC = osp.join(osp.dirname(__file__), 'csrc')
#: the op families with C++ kernels: ``csrc/<family>.cpp``
FAMILIES = tuple(sorted(osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(_CSRC, '*.cpp'))))
_state: dict = {'tried': False, 'ext': {}}


def cpu_arch() -> str:
    """The instruction set the kernels are built for: ``$CBAM_DET_CPU_ARCH`` or ``native``."""
    arch = config.cpu_arch()
    if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._+-]*', arch):
        raise ValueError(
            f'cbam_det: CBAM_DET_CPU_ARCH={arch!r} is not a target name; allowed: native (default) or a gcc '
            f'-march value such as x86-64, x86-64-v2, x86-64-v3, x86-64-v4, skylake-avx512, armv8-a'
        )
    return arch


def _flags() -> List[List[str]]:
    cflags = ['-O3', f'-march={cpu_arch()}', '-fopenmp', '-ffp-contract=off']
    # link OpenMP to torch's own libgomp (the pip wheels bundle one): a second runtime
    # would start its own threads next to torch's and they would fight for the cores
    lib = osp.join(osp.dirname(torch.__file__), 'lib')
    gomp = sorted(glob.glob(osp.join(lib, 'libgomp*.so*')))
    ldflags = [f'-L{lib}', f'-l:{osp.basename(gomp[0])}', f'-Wl,-rpath,{lib}'] if gomp else ['-fopenmp']
    return [cflags, ldflags]


def _cpu_id() -> str:
    """The processor's feature flags (with -march=native the build depends on them)."""
    try:
        with open('/proc/cpuinfo') as f:
            return next((line for line in f if line.startswith(('flags', 'Features'))), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


def build_dir() -> str:
    """Cache folder of the compiled kernels for these sources, flags, processor, torch and Python."""
    key = hashlib.sha1(repr((_flags(), _cpu_id(), torch.__version__, sys.version)).encode())
    for name in sorted(os.listdir(_CSRC)):  # reads the sources: a broken install fails here, not at import
        with open(osp.join(_CSRC, name), 'rb') as f:
            key.update(name.encode() + f.read())
    return osp.join(config.ext_dir(), key.hexdigest()[:16])


def ext(family: str, verbose: bool = False) -> Optional[object]:
    """The compiled kernels of ``family`` (one of :data:`FAMILIES`), or None where they cannot be
    used; every family is compiled once per process, at the first call."""
    if family not in FAMILIES:
        raise ValueError(f'cbam_det.ops.ext: unknown family {family!r}; allowed: {", ".join(FAMILIES)}')
    return _build(verbose).get(family)


def gate_ext(verbose: bool = False) -> Optional[object]:
    """Whether the C++ kernels are usable: the first family's module, or None (then the ``cpu``
    backend cannot run and ``auto`` takes PyTorch)."""
    return _build(verbose).get(FAMILIES[0]) if FAMILIES else None


def _build(verbose: bool) -> dict:
    if config.no_ext():
        return {}
    if not _state['tried']:
        _state['tried'] = True
        from torch.utils.cpp_extension import load

        cflags, ldflags = _flags()
        try:
            path = build_dir()
            built = {}
            for family in FAMILIES:
                folder = osp.join(path, family)
                os.makedirs(folder, exist_ok=True)
                built[family] = load(
                    f'cbam_det_{family}_cpu',
                    [osp.join(_CSRC, f'{family}.cpp')],
                    extra_cflags=cflags + [f'-I{_CSRC}'],
                    extra_ldflags=ldflags,
                    build_directory=folder,
                    verbose=verbose,
                )
            _state['ext'] = built
        except Exception as e:  # no compiler, no headers, no source: the PyTorch path still works
            if cpu_arch() != 'native':  # asked for by name: an explicit request that cannot be honoured
                raise RuntimeError(
                    f'cbam_det: the fused CPU kernels do not compile for CBAM_DET_CPU_ARCH={cpu_arch()!r} '
                    f'({type(e).__name__}: {e}); use a target gcc knows (e.g. x86-64-v2) or unset it for native'
                ) from e
            warnings.warn(
                f'cbam_det: could not compile the fused CPU kernels ({type(e).__name__}: {e}); '
                f'using the slower PyTorch implementation. Set CBAM_DET_NO_EXT=1 to silence this.',
                stacklevel=3,
            )
    return _state['ext']


@config.fixed_when_compiled
def ext_ready() -> bool:
    """Whether :func:`gate_ext` gives the compiled kernels (compiling them if needed)."""
    return gate_ext() is not None
