"""Recording the attention a model applies: CBAM's channel gate M_c and spatial gate M_s
(Woo et al., ECCV 2018, eq. 2-3), SE's gate, and BAM's branch logits Mc(F), Ms(F) (Park et al.,
BMVC 2018, eq. 1-4), as each backend computes them during the forward.

    with record_attention() as gates:
        model(x)
    gates[module]  # {'channel': (N, C), 'spatial': (N, H, W)} or BAM's {'bam_channel', 'bam_spatial'}

Every backend calls :func:`note` where it has the gates; outside :func:`record_attention`
that is a no-op. Recorded tensors are detached float32 copies (the in-place paths overwrite
nothing they hold).
"""

import contextlib
from typing import Dict, Iterator, Optional

import torch
from torch import nn

from ..config import fixed_when_compiled

__all__ = ['record_attention', 'note', 'recording']

_active: list = []


@fixed_when_compiled
def recording() -> bool:
    """Whether a :func:`record_attention` block is open (the backends then expose their gates)."""
    return bool(_active)


@contextlib.contextmanager
def record_attention() -> Iterator[Dict[nn.Module, Dict[str, torch.Tensor]]]:
    """Collect, per attention module, the gates it applied inside the block (the last call wins)."""
    store: Dict[nn.Module, Dict[str, torch.Tensor]] = {}
    _active.append(store)
    try:
        yield store
    finally:
        _active.remove(store)


def note(module: nn.Module, **maps: Optional[torch.Tensor]) -> None:
    """Record ``maps`` (name → tensor, leading dim N) for ``module`` in every open recording."""
    if not recording():
        return
    entry = {name: _shaped(name, t.detach().float().clone()) for name, t in maps.items() if t is not None}
    for store in _active:
        store[module] = dict(entry)


def _shaped(name: str, t: torch.Tensor) -> torch.Tensor:
    """Channel maps as (N, C), spatial maps (N, 1, H, W) as (N, H, W)."""
    if name.endswith('channel'):
        return t.reshape(t.shape[0], -1)
    return t[:, 0] if t.dim() == 4 else t
