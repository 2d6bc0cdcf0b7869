"""Model-config rewrites shared by the tools and the tests: without attention, without downloads.

Configs are plain nested dicts/lists (mmengine ``ConfigDict`` included); every function
returns a rewritten copy and leaves its input unchanged.
"""

from typing import Any

__all__ = ['ATTENTION_KEYS', 'strip_attention', 'has_attention', 'no_pretrained']

ATTENTION_KEYS = ('attention', 'bam', 'plugins')


def strip_attention(cfg: Any) -> Any:
    """A copy of a model config with every ``attention``, ``bam`` and ``plugins`` entry set to None;
    an ``AttentionInserted`` model becomes the detector it wraps."""
    if isinstance(cfg, dict) and cfg.get('type') == 'AttentionInserted':
        return strip_attention(cfg['detector'])
    if isinstance(cfg, dict):
        return {k: (None if k in ATTENTION_KEYS else strip_attention(v)) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(strip_attention(v) for v in cfg)
    return cfg


def has_attention(cfg: Any) -> bool:
    """Whether any ``attention``, ``bam`` or ``plugins`` entry of the config is set (or it is an
    ``AttentionInserted`` model)."""
    if isinstance(cfg, dict) and cfg.get('type') == 'AttentionInserted':
        return True
    if isinstance(cfg, dict):
        return any((k in ATTENTION_KEYS and v) or has_attention(v) for k, v in cfg.items())
    if isinstance(cfg, (list, tuple)):
        return any(has_attention(v) for v in cfg)
    return False


def no_pretrained(cfg: Any) -> Any:
    """A copy without ``init_cfg=dict(type='Pretrained', ...)`` entries (nothing is downloaded)."""
    if isinstance(cfg, dict):
        return {
            k: (None if k == 'init_cfg' and isinstance(v, dict) and v.get('type') == 'Pretrained' else no_pretrained(v))
            for k, v in cfg.items()
        }
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(no_pretrained(v) for v in cfg)
    return cfg
