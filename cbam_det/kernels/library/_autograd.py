"""The eager autograd node of an op family's differentiable op: one node per call, whose forward
calls the op below the autograd dispatch key and whose backward is the op's registered formula.

An op with a registered autograd formula (``torch.library.register_autograd``) has a Python
kernel at the autograd key. Called plainly from an autograd function's forward, or under
``no_grad`` with parameters that require gradients, the dispatcher runs that Python kernel,
which boxes every argument again and redispatches: about twice the op's own dispatch cost on the
host. :func:`below_autograd` skips it. It is ``torch._C._AutoDispatchBelowAutograd`` (what
``torch.library``'s own generated node uses) where this torch has it, else nothing is skipped
(the same results, the plain dispatch); ``tests/test_ops.py`` runs both.
"""

import contextlib
from typing import Callable, ContextManager

import torch

__all__ = ['below_autograd', 'call_below_autograd', 'eager_node']

_GUARD = getattr(torch._C, '_AutoDispatchBelowAutograd', None)


def below_autograd() -> ContextManager:
    """A block in which op calls skip their autograd kernels (nothing is recorded for autograd)."""
    return _GUARD() if _GUARD is not None else contextlib.nullcontext()


def call_below_autograd(op: Callable, *args):
    """``op(*args)`` below the autograd key: for calls that record no autograd (no grad needed)."""
    with below_autograd():
        return op(*args)


def eager_node(name: str, op: Callable, setup_context: Callable, backward: Callable, doc: str) -> type:
    """The ``torch.autograd.Function`` ``name`` whose forward returns ``op(*inputs)`` (below the
    autograd key) and calls ``setup_context(ctx, inputs, output)``, with ``backward(ctx, *grads)``:
    the formula registered on ``op`` for ``torch.compile``, as one eager node."""

    def forward(ctx, *inputs):
        with below_autograd():
            output = op(*inputs)
        setup_context(ctx, inputs, output)
        return output

    attrs = {'forward': staticmethod(forward), 'backward': staticmethod(backward), '__doc__': doc}
    return type(name, (torch.autograd.Function,), attrs)
