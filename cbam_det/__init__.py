"""cbam_det: CBAM (Woo et al., ECCV 2018) and BAM (Park et al., BMVC 2018) for MMDetection 3.x.

``import cbam_det`` registers every module of the project in mmdet's ``MODELS``
registry (and the CPU-capable DDP wrapper in mmengine's ``MODEL_WRAPPERS``), so
that configs can use ``type='CBAM'``.
"""

try:
    import mmcv  # noqa: F401
    import mmdet  # noqa: F401
    import mmengine  # noqa: F401
except ImportError as e:  # cbam_det declares no dependency so that pip never replaces a stack
    raise ImportError(
        f'cbam_det needs an MMDetection 3.x stack (mmengine, mmcv with ops, mmdet), either '
        f'the OneDL line or the upstream one: {e}. Install one with tools/setup_env.sh '
        f'(STACK=onedl or STACK=upstream) or see requirements/*.txt.'
    ) from e

from . import engine  # noqa: F401  (only registration: CPUDistributedDataParallel)
from .models import *  # noqa: F401,F403  (import registers the modules)
from .models import __all__ as _models_all
from .version import __version__

__all__ = ['__version__', *_models_all]
