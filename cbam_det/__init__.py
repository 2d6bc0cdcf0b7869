"""cbam_det: CBAM (Woo et al., ECCV 2018) and BAM (Park et al., BMVC 2018) for MMDetection 3.x.

``import cbam_det`` registers every module of the project in mmdet's ``MODELS``
registry (and the CPU-capable DDP wrapper in mmengine's ``MODEL_WRAPPERS``), so
that configs can use ``type='CBAM'``.
"""
from . import engine  # noqa: F401  (only registration: CPUDistributedDataParallel)
from .models import *  # noqa: F401,F403  (import registers the modules)
from .models import __all__ as _models_all
from .version import __version__

__all__ = ['__version__', *_models_all]
