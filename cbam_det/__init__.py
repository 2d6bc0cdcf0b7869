"""cbam_det: CBAM (Woo et al., ECCV 2018) and BAM (Park et al., BMVC 2018) for MMDetection 3.x.

``import cbam_det`` registers every module of the project in mmdet's ``MODELS``
registry (and the CPU-capable DDP wrapper in mmengine's ``MODEL_WRAPPERS``), so
that configs can use ``type='CBAM'``.

``CBAM_DET_LAYERS_ONLY=1`` imports only the attention layers (CBAM, SE, BAM) and their
kernels (:mod:`cbam_det.kernels`), which need torch, mmengine and the mmdet package but not
mmcv or its compiled ops: for plain PyTorch models, and for the GPU check
(tools/analysis/gpu_check.sh), which runs where no OpenMMLab stack is installed.
"""

from . import config

#: only the attention layers and kernels are imported (``CBAM_DET_LAYERS_ONLY=1``)
LAYERS_ONLY = config.layers_only()

try:
    import mmdet  # noqa: F401
    import mmengine  # noqa: F401

    if not LAYERS_ONLY:
        import mmcv  # noqa: F401
except ImportError as e:  # cbam_det declares no dependency so that pip never replaces a stack
    raise ImportError(
        f'cbam_det needs an MMDetection 3.x stack (mmengine, mmcv with ops, mmdet), either '
        f'the OneDL line or the upstream one: {e}. Install one with tools/setup_env.sh '
        f'(STACK=onedl or STACK=upstream) or see requirements/*.txt.'
    ) from e

if not LAYERS_ONLY:
    from . import engine  # noqa: F401  (only registration: CPUDistributedDataParallel)
from . import kernels  # noqa: E402
from .models import *  # noqa: F401,F403,E402  (import registers the modules)
from .models import __all__ as _models_all  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ['__version__', 'LAYERS_ONLY', 'config', 'kernels', *_models_all]
