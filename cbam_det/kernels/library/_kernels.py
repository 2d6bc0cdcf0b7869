"""Where the ops' CPU kernels come from: the compiled C++ module of each op family
(``cbam_det/ops/csrc/<family>.cpp``). The CUDA kernels are the Triton kernels in each family's file."""

from typing import Optional, Tuple

import torch

__all__ = ['cpu', 'dense']


def cpu(op: str, family: str = 'gates'):
    """The C++ kernels of ``family`` (``cbam_det/ops``); raises naming ``op`` where they are not compiled."""
    from ...ops import ext as family_ext

    ext = family_ext(family)
    if ext is None:
        raise RuntimeError(
            f'cbam_det::{op} has no CPU kernel here: the C++ kernels are not compiled (no compiler, or '
            f'CBAM_DET_NO_EXT=1). The PyTorch backend computes the same: use_backend("torch").'
        )
    return ext


def dense(*tensors: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    """``tensors`` made contiguous (row-major), as the C++ kernels take them. Needed for more than
    the caller's inputs: a compiled graph may hand an op's backward formula a gradient with other
    strides than the ones it was traced with (torch 2.5.1 under inductor), and a ``.contiguous()``
    traced as a no-op in the formula does not fix that."""
    return tuple(None if t is None else t.contiguous() for t in tensors)
