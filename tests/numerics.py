"""One tolerance for every test that compares two floating-point computations of the same thing
(fused against unfused, kernels against torch, compiled or exported against eager), and the
seeds those tests draw their inputs from.

Why a tolerance at all: two float32 computations of one value differ in the order of their sums
(a split reduction, a vectorised loop, inductor's fusion) and in whether a multiply-add is fused
(``-march=native`` gives the C++ kernels FMA on one CPU and not on another; a GPU fuses where
Triton's interpreter never does). Each rounding costs up to half an ulp of its operands, so the
difference is a few ulps of the *largest* operand of a sum, not of the result: a small element
of a tensor, formed by cancellation, can be off by far more than its own ulps. Hence the bound
is scaled by the magnitude of the compared tensor (its largest element), not element by element.

    atol = ULPS · eps(dtype) · √terms · depth · scale

- ``eps``: the machine epsilon of the dtype the values were computed in (float32: 1.19e-7; a
  bfloat16 or float16 comparison against float32 passes its own dtype);
- ``√terms``: a sum of ``terms`` values in two orders differs like a random walk of its
  roundings (√n) rather than the worst case (n); default 1024 terms (a 32×32 map);
- ``depth``: the number of layers the difference travels through (each BatchNorm, conv and
  gate passes its input's error on, scaled by about one): 1 for a module, the count of
  blocks for a backbone (ResNet-50: 16, with its stem and stages 50 layers);
- ``ULPS`` = 4: the slack for a few roundings per layer (a multiply-add, a sigmoid, a division).

This is loose next to a bug: a wrong term, a dropped max gradient or a tie shared wrongly moves
an element by the order of ``scale`` itself (10⁵ times a one-layer bound). It is tight enough
that the tests still find what matters and never what a CPU's rounding decides.

Gradients of one step are judged against the largest gradient of the step
(:func:`assert_grads_close`): a parameter's gradient is a sum over the batch and the pixels of
terms of about that size, so its rounding is theirs, however much they cancel. A bias right
before a training BatchNorm has a true gradient of 0 and float noise is all it holds; its terms
are the BN input's gradients, which a BN over few values can make far larger than any
parameter's gradient, so such a bias is judged against those terms (tests/test_attention_family.py).

Tests that assert bitwise equality (one computation run twice, in place against out of place on
the same kernels) use ``rtol=0, atol=0`` directly: they check the code path, not the arithmetic.

Seeds: conftest seeds torch, numpy and random before every test from ``--seed`` (or
``$CBAM_DET_TEST_SEED``, default 0) and the test's id; tests that build two models or two inputs
alike seed them with :func:`seed`, which also follows ``--seed``. ``pytest --seed 1`` therefore
reruns every comparison with other random inputs and weights.
"""

import math
import os
import zlib
from typing import Optional

import torch

__all__ = ['ULPS', 'SEED', 'seed', 'seed_for', 'generator', 'tolerance', 'assert_close', 'assert_grads_close']

#: roundings allowed per layer (see the module docstring)
ULPS = 4
#: the session's base seed: ``pytest --seed N`` (conftest) or ``$CBAM_DET_TEST_SEED``
SEED = int(os.environ.get('CBAM_DET_TEST_SEED', '0'))


def seed(offset: int = 0) -> int:
    """A seed that follows the session's base seed: ``offset`` tells two seeds of one test apart."""
    return SEED * 1_000_003 + offset


def seed_for(nodeid: str) -> int:
    """The seed conftest sets before the test ``nodeid`` (independent of the order tests run in)."""
    return seed(zlib.crc32(nodeid.encode()) % 1_000_000)


def generator(offset: int = 0) -> torch.Generator:
    """A CPU generator seeded with :func:`seed` (``offset``)."""
    return torch.Generator().manual_seed(seed(offset))


def tolerance(scale: float, *, depth: int = 1, terms: int = 1024, dtype: torch.dtype = torch.float32) -> float:
    """The absolute bound ``ULPS · eps(dtype) · √terms · depth · scale`` (module docstring)."""
    if depth < 1 or terms < 1:
        raise ValueError(f'tolerance: depth and terms must be >= 1, got depth={depth}, terms={terms}')
    return ULPS * torch.finfo(dtype).eps * math.sqrt(terms) * depth * float(scale)


def assert_close(
    got: torch.Tensor,
    want: torch.Tensor,
    *,
    depth: int = 1,
    terms: int = 1024,
    dtype: torch.dtype = torch.float32,
    scale: Optional[float] = None,
    msg: str = '',
) -> None:
    """``got`` equals ``want`` within :func:`tolerance` of ``scale`` (default: ``want``'s largest
    magnitude; pass a larger one where the true value is about 0, such as the gradient of a bias
    right before a training BatchNorm, judged against the largest gradient of the step)."""
    got = torch.as_tensor(got)
    want = torch.as_tensor(want)
    assert got.shape == want.shape, f'{msg}: shape {tuple(got.shape)} != {tuple(want.shape)}'
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    assert torch.equal(torch.isnan(g), torch.isnan(w)), f'{msg}: NaN in different places'
    finite = torch.isfinite(w)
    assert torch.equal(g[~finite & ~torch.isnan(w)], w[~finite & ~torch.isnan(w)]), f'{msg}: infinities differ'
    g, w = g[finite], w[finite]
    if w.numel() == 0:
        return
    if scale is None:
        scale = float(w.abs().max())
    bound = tolerance(scale, depth=depth, terms=terms, dtype=dtype)
    err = float((g - w).abs().max())
    if not err <= bound:
        i = int((g - w).abs().argmax())
        raise AssertionError(
            f'{msg + ": " if msg else ""}max difference {err:.3e} > {bound:.3e} allowed '
            f'(scale {scale:.3e}, depth {depth}, terms {terms}, {dtype}); at element {i}: '
            f'{float(g[i]):.8e} vs {float(w[i]):.8e}; {int(((g - w).abs() > bound).sum())} of {w.numel()} elements off'
        )


def assert_grads_close(got, want, *, depth: int = 2, names=None, **kwargs) -> None:
    """The gradients of one step, each within :func:`tolerance` of the largest gradient of the
    step (``depth`` 2: a module there and back). ``None`` must match ``None``."""
    got, want = list(got), list(want)
    assert len(got) == len(want), f'{len(got)} gradients against {len(want)}'
    present = [w for w in want if w is not None]
    scale = max(float(w.detach().abs().max()) for w in present) if present else 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        name = names[i] if names is not None else f'gradient {i}'
        if g is None or w is None:
            assert g is None and w is None, f'{name}: one gradient is None'
            continue
        assert_close(g, w, depth=depth, scale=scale, msg=name, **kwargs)
