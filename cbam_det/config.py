"""Every switch of cbam_det in one place: the ``CBAM_DET_*`` environment variables are read here
and nowhere else, with the setters and context managers that override them (as timm's
``layers/config.py``). docs/tools.md lists each variable, its default and its effect.

=======================  ==========  ===========================================================
variable                 default     effect
=======================  ==========  ===========================================================
CBAM_DET_BACKEND         auto        the attention's backend: auto, torch, cpu, triton (read at
                                     every call; :func:`set_backend` / :func:`use_backend` win)
CBAM_DET_CHECK_FINITE    0           1: refuse NaN/Inf inputs in a training step (one more pass;
                                     :func:`set_check_finite` wins)
CBAM_DET_NO_EXT          0           1: never compile or use the C++ CPU kernels
CBAM_DET_CPU_ARCH        native      gcc's ``-march`` for the C++ CPU kernels
CBAM_DET_CACHE           ~/.cache/   cache of built mmcv wheels and compiled kernels
                         cbam_det    (``$XDG_CACHE_HOME/cbam_det`` where that is set)
CBAM_DET_EXT_DIR         CACHE/ext   where the compiled C++ kernels are kept
CBAM_DET_LAYERS_ONLY     0           1: ``import cbam_det`` imports only the attention layers and
                                     kernels (no mmcv), as the GPU check does
CBAM_DET_THREADS         (budget)    torch threads of a CPU run of the tools (else
                                     cores // processes − workers, or ``OMP_NUM_THREADS``)
=======================  ==========  ===========================================================

Also read here, not ours: ``TRITON_INTERPRET`` (Triton's interpreter, for the kernels' tests) and
``XDG_CACHE_HOME``. CBAM_DET_TEST_SEED (default 0) is the test suite's, read by tests/numerics.py.
"""

import contextlib
import os
import os.path as osp
from typing import Callable, Iterator, Optional, TypeVar

import torch

__all__ = [
    'BACKENDS',
    'fixed_when_compiled',
    'get_backend',
    'set_backend',
    'use_backend',
    'check_finite',
    'set_check_finite',
    'no_ext',
    'cpu_arch',
    'cache_dir',
    'ext_dir',
    'layers_only',
    'threads',
    'triton_interpreted',
    'env',
    'environ',
    'setdefault_env',
]

BACKENDS = ('auto', 'torch', 'cpu', 'triton')
_F = TypeVar('_F', bound=Callable)


def fixed_when_compiled(fn: _F) -> _F:
    """``fn`` (no arguments), evaluated when ``torch.compile`` traces a caller and kept in the
    graph as a constant, with no guard: for what a process does not change while it runs (the
    environment variables, whether the C++ kernels compiled). Without this, dynamo would guard on
    the whole environment (``os.environ``) and on cbam_det's caches."""
    return torch.compiler.assume_constant_result(fn)


# the requests of set_backend / set_check_finite (None: follow the environment). Plain module
# globals: under torch.compile dynamo guards on their values, so a compiled model recompiles
# when they change (one guard each), and on nothing else here
_backend: Optional[str] = None
_check_finite: Optional[bool] = None


# CPython's os.environ keeps the environment in ``_data`` under encoded keys (os.py, since 3.0):
# read there, a variable costs a dictionary look-up instead of four Python calls, which matters for
# the two read at every module call (CBAM_DET_BACKEND, CBAM_DET_CHECK_FINITE in training). Where
# that layout is missing, os.environ.get.
_RAW = getattr(os.environ, '_data', None)
_ENCODE = getattr(os.environ, 'encodekey', None)
_DECODE = getattr(os.environ, 'decodevalue', None)
_keys: dict = {}
_decoded: dict = {}


def _raw_environ_ok() -> bool:
    return isinstance(_RAW, dict) and callable(_ENCODE) and callable(_DECODE)


_FAST_ENV = _raw_environ_ok()


def env(name: str, default: Optional[str] = None) -> Optional[str]:
    """The environment variable ``name`` (``default`` where it is unset or empty)."""
    if not _FAST_ENV:
        return os.environ.get(name) or default
    key = _keys.get(name)
    if key is None:
        key = _keys[name] = _ENCODE(name)
    raw = _RAW.get(key)
    if not raw:
        return default
    value = _decoded.get(raw)
    if value is None:
        value = _decoded[raw] = _DECODE(raw)
    return value


def environ(**overrides: str) -> dict:
    """A copy of the environment with ``overrides`` (None removes a variable), for a child process."""
    out = dict(os.environ)
    for k, v in overrides.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def setdefault_env(name: str, value: str) -> str:
    """Set the environment variable ``name`` unless it is set (for child processes and
    torch.distributed's env:// variables); returns its value."""
    return os.environ.setdefault(name, value)


def _flag(name: str) -> bool:
    value = env(name, '0')
    if value not in ('0', '1'):
        raise ValueError(f'cbam_det: {name}={value!r}; allowed: 0 or 1')
    return value == '1'


# ---------------------------------------------------------------- the attention's backend


def _check_backend(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f'cbam_det: unknown {source}={name!r}; allowed: {", ".join(map(repr, BACKENDS))}')
    return name


def get_backend() -> str:
    """The requested backend: :func:`set_backend`'s, else ``$CBAM_DET_BACKEND``, else ``'auto'``."""
    return _backend if _backend is not None else _env_backend()


@fixed_when_compiled
def _env_backend() -> str:
    return _check_backend(env('CBAM_DET_BACKEND', 'auto'), 'CBAM_DET_BACKEND')


def set_backend(name: Optional[str]) -> Optional[str]:
    """Request ``name`` for every later call (None: follow ``$CBAM_DET_BACKEND`` again);
    returns the previous request."""
    global _backend
    previous = _backend
    _backend = None if name is None else _check_backend(name, 'backend')
    return previous


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with use_backend('torch'):`` — the backend for the calls inside the block."""
    global _backend
    previous = set_backend(name)
    try:
        yield
    finally:
        _backend = previous


# ---------------------------------------------------------------- checks


def check_finite() -> bool:
    """Whether the attention modules refuse NaN/Inf inputs in a training step."""
    return _check_finite if _check_finite is not None else _env_check_finite()


@fixed_when_compiled
def _env_check_finite() -> bool:
    return _flag('CBAM_DET_CHECK_FINITE')


def set_check_finite(enabled: Optional[bool]) -> Optional[bool]:
    """Turn the opt-in NaN/Inf check of the attention modules' inputs on or off (None: follow
    ``CBAM_DET_CHECK_FINITE`` again); returns the previous setting (None where it followed the
    variable), which restores it when passed back. In training, one batch with a NaN or Inf
    poisons a BatchNorm's running statistics for good; the check costs one pass over the input,
    so it is off by default."""
    global _check_finite
    previous = _check_finite
    _check_finite = None if enabled is None else bool(enabled)
    return previous


# ---------------------------------------------------------------- the C++ CPU kernels and caches


def no_ext() -> bool:
    """``CBAM_DET_NO_EXT=1``: the C++ CPU kernels are neither compiled nor used."""
    return _flag('CBAM_DET_NO_EXT')


def cpu_arch() -> str:
    """gcc's ``-march`` for the C++ CPU kernels: ``$CBAM_DET_CPU_ARCH`` or ``native``."""
    return env('CBAM_DET_CPU_ARCH', 'native')


def cache_dir() -> str:
    """``$CBAM_DET_CACHE``, else ``$XDG_CACHE_HOME/cbam_det``, else ``~/.cache/cbam_det``."""
    xdg = env('XDG_CACHE_HOME') or osp.join(osp.expanduser('~'), '.cache')
    return env('CBAM_DET_CACHE') or osp.join(xdg, 'cbam_det')


def ext_dir() -> str:
    """Where the compiled C++ kernels are kept: ``$CBAM_DET_EXT_DIR`` or ``<cache>/ext``."""
    return env('CBAM_DET_EXT_DIR') or osp.join(cache_dir(), 'ext')


# ---------------------------------------------------------------- imports, threads, Triton


def layers_only() -> bool:
    """``CBAM_DET_LAYERS_ONLY=1``: only the attention layers and kernels are imported (no mmcv)."""
    return _flag('CBAM_DET_LAYERS_ONLY')


def threads() -> Optional[int]:
    """``$CBAM_DET_THREADS``, the torch threads of a CPU run of the tools (None: unset)."""
    value = env('CBAM_DET_THREADS')
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f'CBAM_DET_THREADS={value!r}: must be a positive integer')
    return int(value)


def triton_interpreted() -> bool:
    """``TRITON_INTERPRET=1``: Triton's interpreter runs the kernels on CPU tensors (tests)."""
    return env('TRITON_INTERPRET', '0') == '1'
