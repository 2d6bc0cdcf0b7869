"""cbam_det's operator families (``torch.ops.cbam_det.*``): each file holds one family's schemas, CPU
kernels (C++, ``cbam_det/ops/csrc/<family>.cpp``), CUDA kernels (Triton), PyTorch twin (what a
failing Triton launch computes under ``auto``), fakes (for ``torch.compile``) and autograd (one
node per call), side by side. The eager backends and ``torch.compile`` call the same ops.

- :mod:`.gates`: CBAM (Woo et al., ECCV 2018) and SE (Hu et al., CVPR 2018): ``gates``,
  ``gates_``, ``gates_backward``, ``update_stats_``;
- :mod:`.bam`: BAM (Park et al., BMVC 2018): ``bam_apply``, ``bam_apply_``, ``bam_backward``,
  ``pointwise_conv``, ``pointwise_conv_input_grad``.
"""

import torch

from . import bam, gates  # noqa: F401  (imported to register the ops)

#: every op of the namespace, by name (``torch.ops.cbam_det.<name>``)
OPS = {
    name: getattr(torch.ops.cbam_det, name).default
    for name in (
        'gates',
        'gates_',
        'gates_backward',
        'update_stats_',
        'bam_apply',
        'bam_apply_',
        'bam_backward',
        'pointwise_conv',
        'pointwise_conv_input_grad',
    )
}

#: every Triton kernel of the families, by name (the ahead-of-time compile tool and the census)
KERNELS = {
    name: fn
    for family in (gates, bam)
    for name, fn in vars(family).items()
    if name.endswith('_kernel') and callable(fn)
}

#: the kernels of :data:`KERNELS` that touch no full-size tensor (per-channel or per-pixel work)
SMALL_KERNELS = frozenset(gates.SMALL_KERNELS + bam.SMALL_KERNELS)

__all__ = ['OPS', 'KERNELS', 'SMALL_KERNELS', 'gates', 'bam']
