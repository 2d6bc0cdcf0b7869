"""Shared argument checks and numerics for the attention layers (CBAM, SE, BAM)."""

import contextlib
from typing import ContextManager, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import config
from ...config import set_check_finite

__all__ = [
    'hidden_channels',
    'check_choice',
    'check_odd_kernel',
    'check_input',
    'set_check_finite',
    'safe_batch_norm',
    'check_not_frozen',
    'autocast_off',
]


def hidden_channels(owner: str, in_channels: int, reduction: int, min_hidden_channels: Optional[int] = None) -> int:
    """Hidden width ``max(in_channels // reduction, min_hidden_channels)``; refuse 0.

    Floor division as in the authors' official code (``gate_channels // reduction_ratio``).
    """
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ValueError(f'{owner}: in_channels must be a positive int, got {in_channels!r}')
    if not isinstance(reduction, int) or isinstance(reduction, bool) or reduction < 1:
        raise ValueError(f'{owner}: reduction must be a positive int, got {reduction!r}')
    hidden = in_channels // reduction
    if min_hidden_channels is not None:
        if not isinstance(min_hidden_channels, int) or min_hidden_channels < 1:
            raise ValueError(
                f'{owner}: min_hidden_channels must be None or a positive int, got {min_hidden_channels!r}'
            )
        hidden = max(hidden, min_hidden_channels)
    if hidden < 1:
        raise ValueError(
            f'{owner}: reduction={reduction} leaves 0 hidden channels for in_channels={in_channels} '
            f'(hidden = in_channels // reduction); allowed: 1 <= reduction <= {in_channels}, '
            f'or set min_hidden_channels'
        )
    return hidden


def check_choice(owner: str, name: str, value, allowed: Iterable) -> None:
    """Raise ``ValueError`` naming the argument and its allowed values."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f'{owner}: unknown {name}={value!r}; allowed: {", ".join(map(repr, allowed))}')


def check_odd_kernel(owner: str, name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value % 2 == 0:
        raise ValueError(
            f'{owner}: {name} must be a positive odd int (e.g. 3 or 7) so that the '
            f'output keeps the input size, got {value!r}'
        )


_FLOAT_DTYPES = 'float16, bfloat16, float32 or float64'


def autocast_off(device: torch.device) -> ContextManager:
    """Autocast switched off for ``device`` (the gates' small layers run in their own dtype);
    nothing to switch on a device without autocast (e.g. ``meta``)."""
    available = getattr(torch.amp, 'is_autocast_available', None)  # torch >= 2.4; not traceable in 2.5
    if available is not None and not torch.compiler.is_compiling() and not available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def check_input(owner: str, x: torch.Tensor, in_channels: int, training: bool = False) -> None:
    """Refuse what the modules cannot refine, naming the parameter and what is allowed."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{owner}: input must be a torch.Tensor, got {type(x).__name__}')
    if not x.is_floating_point():
        raise TypeError(f'{owner}: input dtype must be {_FLOAT_DTYPES}, got {x.dtype} (gates would be truncated)')
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f'{owner}: expected input of shape (N, in_channels={in_channels}, H, W), got {tuple(x.shape)}')
    if 0 in x.shape:
        raise ValueError(f'{owner}: input of shape {tuple(x.shape)} is empty; N, H and W must be >= 1')
    if training and config.check_finite() and not bool(torch.isfinite(x).all()):
        bad = 'NaN' if bool(torch.isnan(x).any()) else 'Inf'
        raise FloatingPointError(
            f'{owner}(in_channels={in_channels}): the input holds {bad} in a training step; its BatchNorm '
            f'statistics would be poisoned. Find the layer before it that produces {bad} '
            f'(set_check_finite(False) or CBAM_DET_CHECK_FINITE=0 turns this check off)'
        )


def safe_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
    """``bn(x)``, except that one value per channel in training uses the running statistics.

    BatchNorm cannot normalise a single value (batch 1 through BAM's channel MLP, or
    batch 1 with a 1×1 map); the official code raises there. We normalise it with the
    running statistics and leave them unchanged, as in eval mode. ``update_stats=False``
    computes the same output as ``bn(x)`` without touching the running statistics.
    """
    if bn.training and x.numel() // x.shape[1] <= 1:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    if bn.training and not update_stats:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    if bn.training and bn.momentum is None and bn.track_running_stats:
        return _cumulative_batch_norm(bn, x)
    return bn(x)


def _cumulative_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn(x)`` for ``momentum=None`` (the cumulative average of the batch statistics) without a
    host synchronisation: PyTorch's module reads ``float(num_batches_tracked)``; here the factor
    1 / num_batches_tracked stays on the device (``lerp_`` by a tensor)."""
    bn.num_batches_tracked.add_(1)
    with torch.no_grad():
        dims = [d for d in range(x.dim()) if d != 1]
        factor = bn.num_batches_tracked.reciprocal().to(bn.running_mean.dtype)
        bn.running_mean.lerp_(x.mean(dims).to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(x.var(dims, unbiased=True).to(bn.running_var.dtype), factor)
    return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)


def check_not_frozen(module: nn.Module, owner: str) -> None:
    """Refuse the two mmdet traps that silently freeze attention added to a pretrained backbone.

    - ``frozen_stages`` covering the module's stage: mmdet puts the stage in eval mode and
      sets ``requires_grad=False``, so the attention would stay at its initialisation forever.
    - ``norm_eval=True``: the attention's BatchNorms are put in eval mode while it trains,
      so their statistics never move from the initial 0 / 1.
    Checked only while gradients are enabled (a training step); ``allow_frozen=True`` on the
    module (or cbam_det's ``AttnResNet(freeze_attention=True)``) accepts both on purpose,
    e.g. for converted official weights. Inside a backbone that decided at build time whether
    the attention trains (mmdet's ResNet family with cbam_det imported, cbam_det's backbones),
    a module frozen afterwards is its owner's choice (a teacher, an EMA copy, fine-tuning) and
    passes; so does any module without a trainable parameter as far as its BatchNorms go.
    """
    if not torch.is_grad_enabled() or getattr(module, 'allow_frozen', False):
        return
    compiling = torch.compiler.is_compiling()  # traced once: no cache
    state = None if compiling else module.__dict__.get('_frozen_checked')  # dropped by train()/_apply
    if state is None:
        bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        state = [list(module.parameters()), bns, None]
        if not compiling:
            module.__dict__['_frozen_checked'] = state
    key = [p.requires_grad for p in state[0]]
    if key == state[2]:
        return  # checked already in this mode with these parameters trainable
    params, bns = state[0], state[1]
    trainable = any(key)
    if not trainable and getattr(module, '_cbam_det_decided', False):
        state[2] = key
        return
    if not module.training and params and not trainable:
        raise RuntimeError(
            f"{owner} is frozen (eval mode, requires_grad=False) during a training step: mmdet's "
            f'frozen_stages covers its stage, so it would stay at its initialisation forever. '
            f'Use frozen_stages=-1 (or below this stage), backbone type="AttnResNet" (keeps attention '
            f'trainable), or allow_frozen=True if its weights are pretrained.'
        )
    if (trainable or not params) and module.training and any(not m.training for m in bns):
        raise RuntimeError(
            f"{owner}'s BatchNorm is in eval mode while it trains (mmdet's norm_eval=True): its "
            f'statistics would never be updated. Use norm_eval=False, backbone type="AttnResNet" '
            f'(keeps attention BatchNorms training), or allow_frozen=True if its weights are pretrained.'
        )
    state[2] = key
