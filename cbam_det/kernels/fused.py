"""Fused gating on the CPU (C++) or Triton kernels: CBAM (Woo et al., ECCV 2018, eq. 1-3) and SE
(Hu et al., CVPR 2018), optionally fused with the BatchNorm that precedes them, and BAM's
refinement F ⊗ (1 + M(F)) (Park et al., BMVC 2018, eq. 1-2).

    x = BN(z) (or x = z),  y = x ⊗ σ(MLP(pool_hw(x))) ⊗ σ(BN(f([pool_c(x ⊗ g_c)])))

One autograd function does every full-size step in the kernels of a backend (``ext``: the
compiled ``cbam_det/ops`` module or :mod:`.triton_gate`, same functions): forward
reads the input three times and writes the output once; between forward and backward it
keeps only the input z (and references). With a BatchNorm, z is the BN's input, which a
plain block keeps for the BN's backward anyway, and x = a[c]·z + b[c] is recomputed on the
fly: the fused block costs no extra activation memory. A plugin fed by a BatchNorm gets the
same by reading z off the BN's autograd node (:func:`_bn_source`). The small steps (shared
MLP, k×k conv, the gate's own BN, sigmoids) run on (N, C) and (N, 1, H, W) tensors; backward
recomputes them (and the pools) and differentiates them with ``torch.autograd.grad``.

Called by :mod:`.dispatch` for the ``cpu`` and ``triton`` backends; the ``torch`` backend
computes the same values with PyTorch operations.
"""

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .policy import fallback, fallback_enabled
from .record import note, recording

__all__ = [
    'gated_attention',
    'gated_forward',
    'bam_gate',
    'bn_node_readable',
]


class _BNState(NamedTuple):
    """A BatchNorm as the gate kernels see it: x = a[c]·z + b[c] with these statistics.

    Holds references only (parameters, the statistics the BN used): a and b are formed
    anew by :meth:`affine` wherever needed, so a training step keeps no tensors of its own
    between forward and backward (see :class:`_GatedAttention`).
    """

    weight: Optional[torch.Tensor]  # γ (None: affine=False); gradients go to it and to β
    bias: Optional[torch.Tensor]
    mean: torch.Tensor
    invstd: Optional[torch.Tensor]  # batch statistics: 1 / √(var + eps) as the BN formed it
    var: Optional[torch.Tensor]  # running statistics: the running variance (invstd from it)
    eps: float
    batch_stats: bool  # the statistics are the batch's (their gradient flows back to z)
    from_moments: bool  # x's channel pooling comes from channel_moments (the fused block)

    @classmethod
    def running(cls, weight, bias, mean: torch.Tensor, var: torch.Tensor, eps: float) -> '_BNState':
        """A BatchNorm that normalises with its running statistics (eval mode)."""
        return cls(weight, bias, mean, None, var, eps, batch_stats=False, from_moments=False)

    def affine(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(invstd, a, b)."""
        invstd = self.invstd if self.invstd is not None else torch.rsqrt(self.var + self.eps)
        with torch.no_grad():
            a = invstd * self.weight if self.weight is not None else invstd
            b = self.bias - self.mean * a if self.bias is not None else -self.mean * a
        return invstd, a.contiguous(), b.contiguous()


def _gates(module: nn.Module) -> Tuple[nn.Module, Optional[nn.Module], bool]:
    """(channel gate, spatial gate or None, whether the channel gate uses max pooling)."""
    cg, sg = module.kernel_gates()
    return cg, sg, cg.pool == 'avg_max'


def _moments(ext, z: torch.Tensor) -> tuple:
    """Per (n, c) row: Σ(z − k), Σ(z − k)², max z, min z with the shift k = z[0, :, 0, 0]."""
    shift = z[0, :, 0, 0].contiguous()
    return (shift,) + tuple(ext.channel_moments(z, shift))


def _bn_state(bn: nn.BatchNorm2d, z: torch.Tensor, ext) -> Tuple[_BNState, tuple]:
    """The statistics of ``bn`` on ``z`` from one pass over z (and its :func:`_moments`).

    Updates the running statistics exactly as ``nn.BatchNorm2d`` does in training.
    """
    moments = _moments(ext, z)
    shift, s1, s2 = moments[:3]
    n, c, h, w = z.shape
    batch_stats = bn.training or not bn.track_running_stats
    mean, invstd, var = bn.running_mean, None, bn.running_var
    if batch_stats:
        m = n * h * w
        d = s1.sum(0) / m
        mean, var = (shift.double() + d).float(), (s2.sum(0) / m - d * d).clamp_min(0).float()
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            mom = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - mom).add_(mean, alpha=mom)
            bn.running_var.mul_(1 - mom).add_(var * (m / max(m - 1, 1)), alpha=mom)
        invstd, var = torch.rsqrt(var + bn.eps), None
    weight, bias = (bn.weight, bn.bias) if bn.affine else (None, None)
    state = _BNState(
        weight=weight,
        bias=bias,
        mean=mean,
        invstd=invstd,
        var=var,
        eps=bn.eps,
        batch_stats=batch_stats,
        from_moments=True,
    )
    return state, moments


def _channel_pools(ext, z: torch.Tensor, bn: Optional[_BNState], a, b, moments: Optional[tuple]) -> tuple:
    """(mean, max) over H×W of x, (N, C) each, and Σ_hw (z − μ) with the BN's mean μ where the
    kernels keep it for backward (``ext.CENTERED_SUMS``; else None). For the fused block from the
    moments of z: z ↦ a·z + b is monotone, so the max is a·max(z) + b (a ≥ 0) or a·min(z) + b,
    rounded as the kernels round x."""
    centered = bn is not None and ext.CENTERED_SUMS
    if bn is None or not bn.from_moments:
        if centered:
            return tuple(ext.channel_pool(z, a, b, bn.mean))
        return tuple(ext.channel_pool(z, a, b)) + (None,)
    shift, s1, _, zmax, zmin = moments if moments is not None else _moments(ext, z)
    hw = z.shape[2] * z.shape[3]
    row_mean = shift.double() + s1 / hw
    extreme = ext.affine_extreme  # the Triton kernels: x rounded as they round it (C++: None)
    mx = extreme(zmax, zmin, a, b) if extreme is not None else torch.where(a >= 0, a * zmax + b, a * zmin + b)
    zsum = s1 - hw * (bn.mean.double() - shift.double()) if centered else None
    return (a.double() * row_mean + b.double()).float(), mx, zsum


class _SmallForward(NamedTuple):
    """The small pieces of one forward: the folded BN's affine form, the pooled descriptors
    as autograd leaves, the gates with their graphs, and the flat gates the kernels read."""

    invstd: Optional[torch.Tensor]  # the folded BN's 1/√(var + eps) (None: no BN)
    a: Optional[torch.Tensor]  # x = a[c]·z + b[c]
    b: Optional[torch.Tensor]
    channel_avg: torch.Tensor  # (N, C) leaf: mean over H×W of x
    channel_max: Optional[torch.Tensor]  # (N, C) leaf: max over H×W of x (None: the gate has no max pool)
    channel_gate: torch.Tensor  # (N, C, 1, 1) σ(MLP(...)), with its graph when grad
    channel_gate_flat: torch.Tensor  # (N, C) detached, contiguous: what the kernels multiply by
    spatial_avg: Optional[torch.Tensor]  # (N, 1, H, W) leaf: mean over C of x ⊗ g_c (None: no spatial gate)
    spatial_max: Optional[torch.Tensor]  # (N, 1, H, W) leaf: max over C of x ⊗ g_c
    spatial_max_flat: Optional[torch.Tensor]  # (N, H·W) the kernels' max, for the tie masks in backward
    spatial_gate: Optional[torch.Tensor]  # (N, 1, H, W) σ(BN(conv(...))), with its graph when grad
    spatial_gate_flat: Optional[torch.Tensor]  # (N, H·W) detached, contiguous
    centered_sum: Optional[torch.Tensor] = None  # (N, C) float64 Σ_hw (z − μ) of a folded BN (ext.CENTERED_SUMS)


def _small_forward(
    module: nn.Module,
    ext,
    z: torch.Tensor,
    bn: Optional[_BNState],
    grad: bool,
    update_stats: bool,
    moments: Optional[tuple] = None,
) -> _SmallForward:
    """Pools (C++) and the small gate graphs (autograd when ``grad``; the spatial gate's BN
    updates its running statistics only with ``update_stats``), the BN's (invstd, a, b)
    included. Deterministic: backward calls it again."""
    n, c, h, w = z.shape
    cg, sg, use_max = _gates(module)
    invstd, a, b = bn.affine() if bn is not None else (None, None, None)
    avg, mx, centered_sum = _channel_pools(ext, z, bn, a, b, moments)
    with torch.set_grad_enabled(grad):
        channel_avg, channel_max = avg.requires_grad_(grad), (mx.requires_grad_(grad) if use_max else None)
        channel_gate = module.gate(cg.logits(channel_avg, channel_max))
    channel_gate_flat = channel_gate.detach().reshape(n, c).contiguous()
    spatial_avg = spatial_max = spatial_max_flat = spatial_gate = spatial_gate_flat = None
    if sg is not None:
        savg, spatial_max_flat = ext.spatial_pool(z, a, b, channel_gate_flat)
        with torch.set_grad_enabled(grad):
            spatial_avg = savg.view(n, 1, h, w).requires_grad_(grad)
            spatial_max = spatial_max_flat.view(n, 1, h, w).requires_grad_(grad)
            spatial_gate = module.gate(sg.logits(spatial_avg, spatial_max, update_stats=update_stats))
        spatial_gate_flat = spatial_gate.detach().reshape(n, h * w).contiguous()
    return _SmallForward(
        invstd=invstd,
        a=a,
        b=b,
        channel_avg=channel_avg,
        channel_max=channel_max,
        channel_gate=channel_gate,
        channel_gate_flat=channel_gate_flat,
        spatial_avg=spatial_avg,
        spatial_max=spatial_max,
        spatial_max_flat=spatial_max_flat,
        spatial_gate=spatial_gate,
        spatial_gate_flat=spatial_gate_flat,
        centered_sum=centered_sum,
    )


def _forward_gates(
    module: nn.Module, ext, z: torch.Tensor, bn, grad: bool = False
) -> Tuple[Optional[_BNState], _SmallForward]:
    """Forward's gates (the BNs update their running statistics; ``grad``: with the small
    graphs for a backward that keeps them). ``bn``: None, a BatchNorm2d to fold in, or a
    :class:`_BNState`; returned as a state."""
    moments = None
    if isinstance(bn, nn.Module):
        bn, moments = _bn_state(bn, z, ext)
    return bn, _small_forward(module, ext, z, bn, grad=grad, update_stats=True, moments=moments)


def gated_forward(ctx, module: nn.Module, ext, z: torch.Tensor, bn, out: Optional[torch.Tensor], grad: bool) -> tuple:
    """The forward of a gated-attention autograd function: the gates (with their small graphs when
    ``grad``), the recorded attention, y = x·g_c·g_s into ``out`` (marked dirty) or a new tensor,
    and z saved for backward. Returns (BN state, :class:`_SmallForward`, y)."""
    with torch.set_grad_enabled(grad):
        bn, s = _forward_gates(module, ext, z, bn, grad=grad)
    note(module, channel=s.channel_gate, spatial=s.spatial_gate)
    if out is not None:
        ctx.mark_dirty(out)
    y = ext.apply_gates(z, s.a, s.b, s.channel_gate_flat, s.spatial_gate_flat, out)
    ctx.save_for_backward(z)
    return bn, s, y


def _grads(outputs: torch.Tensor, inputs: List[torch.Tensor], grad_out: torch.Tensor) -> List[Optional[torch.Tensor]]:
    return list(torch.autograd.grad(outputs, inputs, grad_out, allow_unused=True)) if inputs else []


class _GatedAttention(torch.autograd.Function):
    """(z, out, module, bn, reuse_input, ext, *params) → y; ``ext``: the kernels (CPU or
    Triton); ``params`` are the module's and the
    BN's parameters. ``bn``: None, a BatchNorm2d to fold in (its statistics computed and
    updated here), or the :class:`_BNState` of a BatchNorm that already ran (see
    :func:`_bn_source`). ``out``: a tensor to write y into (marked dirty). ``reuse_input``
    (no BN): backward may write dx over z.

    Between forward and backward only z and references are kept: backward recomputes the
    pools (two reads of z) and the small graphs. Small tensors that outlive forward would
    sit in the allocator's heap between the big activations and fragment it, which costs
    more page faults than the two extra passes cost (measurements: docs/performance.md).
    """

    @staticmethod
    def forward(
        ctx, z: torch.Tensor, out: Optional[torch.Tensor], module: nn.Module, bn, reuse_input: bool, ext, *params
    ):
        bn, _, y = gated_forward(ctx, module, ext, z, bn, out, grad=False)
        ctx.module, ctx.bn, ctx.params, ctx.reuse_input, ctx.ext = module, bn, params, reuse_input, ext
        ctx.fallback = fallback_enabled()  # backward may run on the autograd engine's thread
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        with fallback(ctx.fallback):
            return _GatedAttention._backward(ctx, dy)

    @staticmethod
    def _backward(ctx, dy: torch.Tensor):
        ext = ctx.ext
        (z,), bn = ctx.saved_tensors, ctx.bn
        s = _small_forward(ctx.module, ext, z, bn, grad=True, update_stats=False)
        a, b, gc, gs = s.a, s.b, s.channel_gate_flat, s.spatial_gate_flat
        n, c, h, w = z.shape
        dy = _layout_of(dy, z)
        cg, sg, use_max = _gates(ctx.module)
        param_grads = {}
        dgc, dgs, cnt = ext.gate_grads(dy, z, a, b, gc, gs, s.spatial_max_flat)
        w_avg = w_max = None
        if sg is not None:
            ps = [p for p in sg.parameters() if p.requires_grad]
            d = _grads(s.spatial_gate, [s.spatial_avg, s.spatial_max] + ps, dgs.view(n, 1, h, w))
            param_grads.update(zip(ps, d[2:]))
            w_avg = (d[0].reshape(n, h * w) / c).contiguous()
            w_max = (d[1].reshape(n, h * w) / cnt.clamp_min(1)).contiguous()
            dgc = dgc + ext.spatial_pool_grad(z, a, b, gc, s.spatial_max_flat, w_avg, w_max)
        pc = [p for p in cg.parameters() if p.requires_grad]
        leaves = [s.channel_avg] + ([s.channel_max] if use_max else [])
        d = _grads(s.channel_gate, leaves + pc, dgc.view(n, c, 1, 1))
        param_grads.update(zip(pc, d[len(leaves) :]))
        d_avg = d[0].contiguous()
        d_max = d[1].contiguous() if use_max else None
        cmax = s.channel_max.detach() if use_max else None
        want_sums = bn is not None and (
            bn.batch_stats or any(t is not None and t.requires_grad for t in (bn.weight, bn.bias))
        )
        # an inplace module's input is read by nobody else (its contract), so once backward has
        # read it, dx can take its place: one allocation less
        out = z if ctx.reuse_input and not want_sums else None
        dx, s1, s2 = ext.input_grad(
            dy, z, a, b, gc, gs, s.spatial_max_flat, w_avg, w_max, d_avg, cmax, d_max, want_sums, out
        )
        if bn is not None:
            dx = _bn_backward(ext, bn, s.invstd, a, z, dx, s1, s2, param_grads)
        return (dx, None, None, None, None, None) + tuple(param_grads.get(p) for p in ctx.params)


def _layout_of(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``t`` in ``z``'s memory layout (NCHW or channels-last), which the kernels read it with."""
    fmt = torch.channels_last if not z.is_contiguous() else torch.contiguous_format
    return t.contiguous(memory_format=fmt)


def _bn_backward(
    ext,
    bn: _BNState,
    invstd: torch.Tensor,
    scale: torch.Tensor,
    z: torch.Tensor,
    dx: torch.Tensor,
    s1: Optional[torch.Tensor],
    s2: Optional[torch.Tensor],
    param_grads: dict,
) -> torch.Tensor:
    """dz from dx = d(BN output), in place; BN weight/bias gradients into ``param_grads``.
    ``scale`` = a = γ·invstd: d x / d z at fixed statistics."""
    mean = bn.mean
    if s1 is not None:
        sum_dx = s1.double().sum(0)
        sum_dx_xhat = invstd.double() * (s2.double().sum(0) - mean.double() * sum_dx)
        if bn.weight is not None and bn.weight.requires_grad:
            param_grads[bn.weight] = sum_dx_xhat.float()
        if bn.bias is not None and bn.bias.requires_grad:
            param_grads[bn.bias] = sum_dx.float()
    if not bn.batch_stats:  # running statistics: a per-channel scale
        zero = torch.zeros_like(scale)
        return ext.affine_combine_(dx, z, scale, zero, zero)
    m = z.numel() // z.shape[1]
    k = scale.double() * invstd.double() * sum_dx_xhat / m
    coef_z = (-k).float().contiguous()
    const = (k * mean.double() - scale.double() * sum_dx / m).float().contiguous()
    return ext.affine_combine_(dx, z, scale, coef_z, const)


def _saved_tensor_hooks_active() -> bool:
    """Whether ``saved_tensors_hooks`` (activation checkpointing, offloading) are in force:
    then saved tensors must not be unpacked in forward."""
    probe = torch.empty(0, requires_grad=True)
    with torch.enable_grad():
        node = probe.sin().grad_fn
    try:
        node._raw_saved_self.register_hooks(lambda t: t, lambda t: t)
    except RuntimeError:  # the default hooks got there first
        return True
    except AttributeError:  # a torch without this node field: assume hooks, keep the plain graph
        return True
    return False


# Fields of torch's ``NativeBatchNormBackward0`` node that :func:`_bn_source` reads. They are
# not public API: :func:`bn_node_readable` checks once per process that they exist and mean
# what _bn_source assumes; where they do not, the plugin simply keeps the plain graph.
_BN_NODE_FIELDS = (
    '_saved_input',
    '_saved_weight',
    '_saved_training',
    '_saved_eps',
    '_saved_result1',
    '_saved_result2',
    '_saved_running_mean',
    '_saved_running_var',
)
_bn_node_state: dict = {}


def bn_node_readable() -> bool:
    """Whether this torch's BatchNorm autograd node exposes what :func:`_bn_source` reads.

    Probes a small BatchNorm in training and in eval mode: the node must be
    ``NativeBatchNormBackward0`` with every field of ``_BN_NODE_FIELDS``, keep the BN's
    input and weight, name the trainable bias as its third input, and in training save
    the batch mean and 1/√(var + eps). Cached per process (per ``_BN_NODE_FIELDS``).
    """
    fields = _BN_NODE_FIELDS
    if _bn_node_state.get('fields') != fields:
        _bn_node_state.update(fields=fields, ok=_probe_bn_node(fields))
    return _bn_node_state['ok']


def _probe_bn_node(fields: Tuple[str, ...]) -> bool:
    bn = nn.BatchNorm2d(3)
    z = torch.linspace(-1.0, 2.0, 2 * 3 * 2 * 2).reshape(2, 3, 2, 2).requires_grad_()
    try:
        with torch.enable_grad():
            for training in (True, False):
                bn.train(training)
                node = bn(z).grad_fn
                if type(node).__name__ != 'NativeBatchNormBackward0':
                    return False
                saved = {f: getattr(node, f) for f in fields}
                if (
                    (saved['_saved_input'] is not None and not torch.equal(saved['_saved_input'], z))
                    or saved['_saved_weight'] is not None
                    and not torch.equal(saved['_saved_weight'], bn.weight)
                    or saved['_saved_training'] is not training
                    or getattr(node.next_functions[2][0], 'variable', None) is not bn.bias
                ):
                    return False
                if training:
                    zd = z.detach()
                    mean, var = zd.mean((0, 2, 3)), zd.var((0, 2, 3), unbiased=False)
                    if not (
                        torch.allclose(saved['_saved_result1'], mean)
                        and torch.allclose(saved['_saved_result2'], (var + bn.eps).rsqrt())
                    ):
                        return False
    except (AttributeError, IndexError, RuntimeError, TypeError):
        return False
    return True


def _bn_source(x: torch.Tensor) -> Optional[Tuple[torch.Tensor, _BNState]]:
    """(z, BN state) when ``x`` = BN(z) is the untouched output of an affine BatchNorm with a
    trainable bias (PyTorch's native BatchNorm: CPU, or CUDA without cuDNN), read from x's
    autograd node; else None.

    That node keeps z (the BN's input) for its own backward anyway, so a gate on x can take
    z, γ and β as its inputs instead: it recomputes x = a·z + b in its kernels and applies
    the BN backward in place itself, x need not outlive the gate, and the BN's node drops
    out of the graph. This is how a plugin after a block's last BN (mmdet ResNet
    ``position='after_conv3'``) gets the fused path's memory and speed without owning the
    BN. The statistics are the ones the BN used (its running statistics were updated by
    the BN), a = invstd·γ and b = β − mean·a as in PyTorch's CPU kernel (which fuses the
    multiply-adds, so x differs from the BN output by rounding), and the gate equals the
    gate applied to x within float32 rounding. Hooks on x (``register_hook``,
    ``retain_grad``), saved-tensor hooks in force, or a torch whose BN node does not pass
    :func:`bn_node_readable` keep the plain graph.
    """
    node = x.grad_fn
    if (
        type(node).__name__ != 'NativeBatchNormBackward0'
        or x._version != 0
        or x._backward_hooks
        or x.retains_grad
        or not bn_node_readable()
        or _saved_tensor_hooks_active()
    ):
        return None
    weight, bias_edge = node._saved_weight, node.next_functions[2][0]
    bias = getattr(bias_edge, 'variable', None)  # AccumulateGrad of a trainable leaf bias
    if weight is None or bias is None:
        return None
    z = node._saved_input
    if z.shape != x.shape or z.dtype != x.dtype or z.stride() != x.stride():
        return None
    if node._saved_training:
        state = _BNState(
            weight=weight,
            bias=bias,
            mean=node._saved_result1,
            invstd=node._saved_result2,
            var=None,
            eps=node._saved_eps,
            batch_stats=True,
            from_moments=False,
        )
    else:
        state = _BNState.running(weight, bias, node._saved_running_mean, node._saved_running_var, node._saved_eps)
    return z, state


def gated_attention(
    ext,
    module: nn.Module,
    z: torch.Tensor,
    bn: Optional[nn.BatchNorm2d] = None,
    inplace: bool = False,
    function: Optional[type] = None,
) -> torch.Tensor:
    """CBAM / SE ``module`` applied to ``z`` (or to ``bn(z)``) with the fused kernels ``ext``.

    Call where :func:`cbam_det.kernels.select_backend` chose ``ext``'s backend. ``inplace`` (the caller does not read
    ``z`` afterwards): the result is written into ``z`` without autograd, and in training
    when z is a BatchNorm output (:func:`_bn_source`); otherwise training's backward writes
    the input gradient over the saved ``z``. ``function``: the autograd function of training
    (default :class:`_GatedAttention`; the Triton backend's keeps its gates, :mod:`.triton_attend`).
    """
    function = function or _GatedAttention
    params = list(module.parameters()) + (list(bn.parameters()) if bn is not None else [])
    if torch.is_grad_enabled() and (z.requires_grad or any(p.requires_grad for p in params)):
        src = _bn_source(z) if bn is None and z.requires_grad else None
        if src is not None:
            z_bn, state = src
            return function.apply(
                z_bn, z.detach() if inplace else None, module, state, False, ext, *params, state.weight, state.bias
            )
        return function.apply(z, None, module, bn, inplace and bn is None, ext, *params)
    with torch.no_grad():
        out = z if inplace else None
        args = _infer_args(module, bn) if ext.gated_infer is not None and not recording() else None
        if args is not None:  # the whole module in one compiled call
            return ext.gated_infer(z, *args, out)
        _, s = _forward_gates(module, ext, z, bn)
        note(module, channel=s.channel_gate, spatial=s.spatial_gate)
        return ext.apply_gates(z, s.a, s.b, s.channel_gate_flat, s.spatial_gate_flat, out)


def _infer_args(module: nn.Module, bn: Optional[nn.BatchNorm2d]) -> Optional[tuple]:
    """The arguments of the kernels' ``gated_infer`` (after z) when inference can run in one
    call: float32 parameters, and every BatchNorm (the folded one, the spatial gate's) using
    its running statistics, so that nothing is updated; else None."""
    if module.gate_scale is not None:  # the one-call kernel forms σ itself
        return None
    cg, sg, use_max = _gates(module)
    tensors = [cg.fc1.weight, cg.fc1.bias, cg.fc2.weight, cg.fc2.bias]
    a = b = None
    if bn is not None:
        if bn.training or not bn.track_running_stats:
            return None
        weight, bias = (bn.weight, bn.bias) if bn.affine else (None, None)
        _, a, b = _BNState.running(weight, bias, bn.running_mean, bn.running_var, bn.eps).affine()
    spatial = (None,) * 5 + (0.0, True)
    if sg is not None:
        sbn = sg.bn
        if sbn.training or not sbn.track_running_stats or sg.pool not in ('avg_max', 'max_avg'):
            return None
        spatial = (
            sg.conv.weight,
            sbn.weight,
            sbn.bias,
            sbn.running_mean,
            sbn.running_var,
            sbn.eps,
            sg.pool == 'avg_max',
        )
        tensors.append(sg.conv.weight)
    if any(t is None or t.dtype != torch.float32 for t in tensors):
        return None
    return (a, b, *tensors[:4], use_max) + spatial


class _BAMGate(torch.autograd.Function):
    """BAM eq. 1-2: (x, Mc, Ms) → x ⊗ (r + σ(Mc + Ms)) (or σ(Mc·Ms)); saves x and the small maps."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, product: bool, residual: bool, ext):
        ctx.save_for_backward(x, c, s)
        ctx.flags, ctx.ext, ctx.fallback = (product, residual), ext, fallback_enabled()
        return ext.bam_apply(x, c, s, product, residual, None)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        x, c, s = ctx.saved_tensors
        with fallback(ctx.fallback):
            dx, dc, ds = ctx.ext.bam_grads(_layout_of(dy, x), x, c, s, *ctx.flags)
        return dx, dc, ds, None, None, None


def bam_gate(
    ext, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, product: bool, residual: bool, inplace: bool = False
) -> torch.Tensor:
    """BAM's refinement ``x ⊗ (r + σ(c + s))`` (``product``: σ(c·s)), r = 1 if ``residual``,
    with c (N, C, 1, 1) and s (N, 1, H, W) float32 logits, in one pass over x (the full-size
    M(F) is never stored) with the kernels ``ext``. ``inplace`` (no autograd) writes the
    result into ``x``."""
    n, ch, h, w = x.shape
    c2, s2 = c.reshape(n, ch).float().contiguous(), s.reshape(n, h * w).float().contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or c.requires_grad or s.requires_grad):
        return _BAMGate.apply(x, c2, s2, product, residual, ext)
    return ext.bam_apply(x, c2, s2, product, residual, x if inplace else None)
