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
import operator
from typing import Callable, ContextManager, Optional, Tuple

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


def eager_node(
    name: str,
    op: Callable,
    setup_context: Callable,
    backward: Callable,
    doc: str,
    inputs: Optional[Tuple[int, ...]] = None,
) -> type:
    """The ``torch.autograd.Function`` ``name`` whose forward returns ``op(*args)`` (below the
    autograd key) and calls ``setup_context(ctx, args, output)``, with ``backward(ctx, *grads)``:
    the formula registered on ``op`` for ``torch.compile``, as one eager node.

    ``inputs``: the positions of the op's arguments that can need a gradient. The node then takes
    those tensors, then the op's whole argument tuple (``apply(*picked, args)``; :func:`call` packs
    it): ``Function.apply`` handles a few inputs instead of every argument, and the backward
    returns the formula's gradients at those positions. None: the node takes the op's arguments."""
    pick = None
    if inputs is not None:
        pick = operator.itemgetter(*inputs) if len(inputs) > 1 else (lambda t: (t[inputs[0]],))

    def forward(ctx, *packed):
        args = packed if pick is None else packed[-1]
        with below_autograd():
            output = op(*args)
        setup_context(ctx, args, output)
        return output

    def picked_backward(ctx, *grads):
        return pick(backward(ctx, *grads)) + (None,)

    def call(*args):
        return node.apply(*args) if pick is None else node.apply(*pick(args), args)

    attrs = {
        'forward': staticmethod(forward),
        'backward': staticmethod(backward if pick is None else picked_backward),
        'call': staticmethod(call),
        '__doc__': doc,
    }
    node = type(name, (torch.autograd.Function,), attrs)
    return node
