"""Whether a kernel launch that fails may fall back to PyTorch: a per-call setting that the
backend switch (:mod:`.dispatch`) decides and the autograd functions carry from forward into
backward (which the autograd engine may run on another thread, outside the caller's context).

``auto`` allows it: a Triton launch that fails to compile or start is computed by its PyTorch
twin (:mod:`.triton_fallback`). A backend named explicitly does not: the failure raises.
"""

import contextlib
import contextvars
from typing import Iterator

__all__ = ['fallback', 'fallback_enabled']

_allowed = contextvars.ContextVar('cbam_det_kernel_fallback', default=False)


@contextlib.contextmanager
def fallback(enabled: bool) -> Iterator[None]:
    """``with fallback(True):`` failing launches inside the block fall back (once warned per
    specialization); ``False``: they raise."""
    token = _allowed.set(bool(enabled))
    try:
        yield
    finally:
        _allowed.reset(token)


def fallback_enabled() -> bool:
    """The setting of the innermost :func:`fallback` block (False outside any)."""
    return _allowed.get()
