"""Where the ops' device kernels come from: the compiled C++ module for CPU tensors, the Triton
launchers (:mod:`cbam_det.kernels.triton_gate`) for CUDA tensors."""

from types import ModuleType

__all__ = ['cpu', 'cuda']


def cpu(op: str):
    """The C++ kernels (``cbam_det/ops``); raises naming ``op`` where they are not compiled."""
    from ...ops import gate_ext

    ext = gate_ext()
    if ext is None:
        raise RuntimeError(
            f'cbam_det::{op} has no CPU kernel here: the C++ kernels are not compiled (no compiler, or '
            f'CBAM_DET_NO_EXT=1). The PyTorch backend computes the same: use_backend("torch").'
        )
    return ext


def cuda(op: str) -> ModuleType:
    """The Triton launchers; raises naming ``op`` where triton cannot be imported."""
    try:
        from .. import triton_gate
    except ImportError as e:
        raise RuntimeError(f'cbam_det::{op} has no CUDA kernel here: triton cannot be imported ({e})') from e
    return triton_gate
