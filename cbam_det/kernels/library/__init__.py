"""cbam_det's operator families (``torch.ops.cbam_det.*``): each file holds one family's schemas, CPU
kernels (C++, ``cbam_det/ops/csrc/<family>.cpp``), CUDA kernels (Triton), PyTorch twin (what a
failing Triton launch computes under ``auto``), fakes (for ``torch.compile``) and autograd (one
node per call), side by side. The eager backends and ``torch.compile`` call the same ops.

- :mod:`.gates`: CBAM (Woo et al., ECCV 2018) and SE (Hu et al., CVPR 2018): ``gates``,
  ``gates_``, ``gates_backward``, ``update_stats_``;
- :mod:`.bam`: BAM (Park et al., BMVC 2018): ``bam_apply``, ``bam_apply_``, ``bam_backward``,
  ``pointwise_conv``, ``pointwise_conv_input_grad``.

Every module of this package whose name does not start with ``_`` is a family and is imported here
(which registers its ops); it declares its op names in ``OPS`` and its kernels that touch no
full-size tensor in ``SMALL_KERNELS``. A new family is a new file: nothing here names it.
"""

import importlib
import pkgutil
from types import ModuleType
from typing import Dict

import torch

#: the op families, by name (``gates``, ``bam``, ...), imported
FAMILIES: Dict[str, ModuleType] = {
    info.name: importlib.import_module(f'{__name__}.{info.name}')
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
    if not info.name.startswith('_')
}

#: every op of the namespace, by name (``torch.ops.cbam_det.<name>``)
OPS = {name: getattr(torch.ops.cbam_det, name).default for family in FAMILIES.values() for name in family.OPS}

#: every Triton kernel of the families, by name (the ahead-of-time compile tool and the census)
KERNELS = {
    name: fn
    for family in FAMILIES.values()
    for name, fn in vars(family).items()
    if name.endswith('_kernel') and callable(fn)
}

#: the kernels of :data:`KERNELS` that touch no full-size tensor (per-channel or per-pixel work)
SMALL_KERNELS = frozenset(name for family in FAMILIES.values() for name in family.SMALL_KERNELS)

__all__ = ['FAMILIES', 'OPS', 'KERNELS', 'SMALL_KERNELS']  # (the families are its submodules)
