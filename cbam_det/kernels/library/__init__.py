"""cbam_det's kernels as PyTorch operators in the ``cbam_det`` namespace (``torch.ops.cbam_det.*``):
the PyTorch dispatcher picks the device's kernel (C++ on CPU, Triton on CUDA), ``torch.compile``
keeps them in its graph (their fakes give the shapes), ``torch.library.opcheck`` tests them.

- :mod:`.gates`: CBAM's and SE's channel_pool, spatial_pool, apply_gates, gate_grads,
  se_gate_grad, spatial_pool_grad;
- :mod:`.bam`: BAM's bam_apply, bam_grads;
- :mod:`.convs`: spatial_conv(_grad), pointwise_conv(_input_grad) (CPU only).

:mod:`cbam_det.kernels.graph` composes the attention modules from them for ``torch.compile`` and
``torch.export``. The eager backends call the same C++ and Triton kernels through :mod:`..fused`, whose one
autograd node per module keeps the census's pass counts without a compiler.
"""

from . import bam, convs, gates  # noqa: F401  (imported to register the ops)

#: every op of the namespace, by name (``torch.ops.cbam_det.<name>``)
OPS = {
    op._name: op
    for op in (
        gates.channel_pool,
        gates.spatial_pool,
        gates.apply_gates,
        gates.gate_grads,
        gates.se_gate_grad,
        gates.spatial_pool_grad,
        bam.bam_apply,
        bam.bam_grads,
        convs.spatial_conv,
        convs.spatial_conv_grad,
        convs.pointwise_conv,
        convs.pointwise_conv_input_grad,
    )
}

__all__ = ['OPS', 'gates', 'bam', 'convs']
