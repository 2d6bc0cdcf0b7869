"""Models of cbam_det; importing this registers them in mmdet's ``MODELS`` (with
``CBAM_DET_LAYERS_ONLY=1`` only the attention layers: see :mod:`cbam_det`)."""

from .. import LAYERS_ONLY
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layers_all

__all__ = [*_layers_all]

if not LAYERS_ONLY:
    from .backbones import *  # noqa: F401,F403
    from .backbones import __all__ as _backbones_all
    from .dense_heads import *  # noqa: F401,F403
    from .dense_heads import __all__ as _dense_heads_all
    from .insert_attention import AttentionInserted, insert_attention, match_modules  # noqa: F401
    from .necks import *  # noqa: F401,F403
    from .necks import __all__ as _necks_all
    from .roi_heads import *  # noqa: F401,F403
    from .roi_heads import __all__ as _roi_heads_all

    __all__ += [
        *_backbones_all,
        *_necks_all,
        *_dense_heads_all,
        *_roi_heads_all,
        'AttentionInserted',
        'insert_attention',
        'match_modules',
    ]
