"""Acceleration of the attention modules, in one place: backends ``torch``, ``cpu`` (compiled
C++), ``triton`` (GPU), chosen by :func:`select_backend` (``auto``) or by the switch
``CBAM_DET_BACKEND`` / :func:`set_backend` / :func:`use_backend` (:mod:`.dispatch`); the kernels
as ``torch.ops.cbam_det`` operator families (:mod:`.library`)."""

from .dispatch import (
    BACKENDS,
    BackendUnavailable,
    attend,
    exporting,
    get_backend,
    pointwise_conv,
    probe_triton,
    run,
    select_backend,
    set_backend,
    use_backend,
)
from .record import record_attention

__all__ = [
    'BACKENDS',
    'BackendUnavailable',
    'attend',
    'exporting',
    'get_backend',
    'pointwise_conv',
    'probe_triton',
    'record_attention',
    'run',
    'select_backend',
    'set_backend',
    'use_backend',
]
