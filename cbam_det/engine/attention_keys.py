"""A checkpoint whose attention does not match the config is named, with the config line that
would match, instead of being loaded half (mmengine only logs the keys it skipped).

- Attention keys in the checkpoint that the model lacks (the checkpoint was trained with CBAM, SE
  or BAM, the config builds none, or others): an error; those weights would be dropped.
- Attention keys the model has and the checkpoint lacks: an error when resuming (a run's own
  checkpoint must match); one log line otherwise (``load_from`` a detector trained without
  attention: the attention starts from its initialisation, which is what adding it means).
- A module whose weights are in the checkpoint but whose gate function differs: trained with
  ``init_mode='identity'`` (normalised gates, a ``gate_scale`` buffer) and loaded into the
  papers' gates, or the reverse: an error naming the ``init_mode`` that matches (the weights
  would load and the function would silently change).

``tools/train.py`` and ``tools/test.py`` register :class:`AttentionKeyCheckHook` themselves.
"""

import re
from typing import Dict, Iterable, List, Optional, Tuple

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

__all__ = ['AttentionKeyCheckHook', 'attention_keys', 'attention_key_mismatch']

#: containers that hold attention modules under other names (AttnSSDHead, AttentionInserted)
_CONTAINERS = ('attentions', 'attention_inserts')

_CONFIG_LINES = {
    'cbam': "backbone=dict(plugins=[dict(cfg=dict(type='CBAM'), stages=(True, True, True, True), "
    "position='after_conv3')]) or backbone=dict(type='AttnResNet', attention=dict(type='CBAM'))",
    'se': "backbone=dict(plugins=[dict(cfg=dict(type='SE'), stages=(True, True, True, True), "
    "position='after_conv3')]) or backbone=dict(type='AttnResNet', attention=dict(type='SE'))",
    'bam': "backbone=dict(type='AttnResNet', bam=dict(type='BAM'))",
    'attentions': "bbox_head=dict(type='AttnSSDHead', attention=dict(type='CBAM'))",
}


def _pattern() -> 're.Pattern':
    """Keys of attention modules: a segment named by a module's ``_abbr_`` (``cbam``, ``bam1``,
    ``cbam2``: mmcv plugins and stage modules add a number) or a container of them. The names come
    from ``ATTENTION_MODULES``, filled as the module classes are defined, so a new module's keys
    are seen without an entry here."""
    from ..models.layers.base import ATTENTION_MODULES

    abbrs = '|'.join(re.escape(a) for a in sorted(ATTENTION_MODULES, key=len, reverse=True))
    return re.compile(rf'(^|\.)((?:{abbrs})\d*|{"|".join(_CONTAINERS)})\.')


def attention_keys(keys: Iterable[str]) -> List[str]:
    """The state-dict keys that belong to cbam_det attention modules."""
    pattern = _pattern()
    return [k for k in keys if pattern.search(k)]


def _config_line(keys: List[str]) -> str:
    from ..models.layers.base import ATTENTION_MODULES

    pattern = _pattern()
    kinds = {pattern.search(k).group(2).rstrip('0123456789') for k in keys}
    lines = [_CONFIG_LINES[k] for k in sorted(kinds) if k in _CONFIG_LINES]
    for k in sorted(kinds - set(_CONFIG_LINES) - set(_CONTAINERS)):  # a module with no line of its own
        lines.append(
            f"backbone=dict(plugins=[dict(cfg=dict(type='{ATTENTION_MODULES[k].__name__}'), "
            f"stages=(True, True, True, True), position='after_conv3')])"
        )
    if 'attention_inserts' in kinds:
        paths = sorted({k.split('.')[1].replace('__', '.') for k in keys if k.startswith('attention_inserts.')})
        lines.append(f"model=dict(type='AttentionInserted', detector=..., targets={paths})")
    return '; '.join(lines)


def attention_key_mismatch(model_keys: Iterable[str], ckpt_keys: Iterable[str], resuming: bool) -> Optional[str]:
    """An error message when the attention keys of a checkpoint and a model disagree, else None
    (see the module docstring); missing keys outside a resume are logged instead."""
    model_att, ckpt_att = set(attention_keys(model_keys)), set(attention_keys(ckpt_keys))
    unexpected, missing = sorted(ckpt_att - model_att), sorted(model_att - ckpt_att)
    problems, scale_unexpected, scale_missing = _gate_mismatch(model_att, ckpt_att)
    unexpected = [k for k in unexpected if k not in scale_unexpected]
    missing = [k for k in missing if k not in scale_missing]
    if unexpected:
        problems.append(
            f'{len(unexpected)} attention keys of the checkpoint have no module in the model '
            f'(e.g. {unexpected[:3]}); a config that builds them: {_config_line(unexpected)}'
        )
    if missing and resuming:
        problems.append(
            f'{len(missing)} attention keys of the model are not in the checkpoint (e.g. {missing[:3]}); '
            f'a resumed run must match its checkpoint: remove the attention that was added since '
            f'({_config_line(missing)})'
        )
    elif missing:
        print_log(
            f'cbam_det: {len(missing)} attention parameters/buffers are not in the loaded checkpoint '
            f'(e.g. {missing[:2]}): that attention starts from its initialisation',
            logger='current',
        )
    return ' '.join(problems) or None


_GATE_SCALE = 'gate_scale'  # the buffer of init_mode='identity' (cbam_det.models.layers.base)


def _scale_only(keys_with_scale: set, other: set) -> List[str]:
    """The gate_scale keys of one side whose module has weights on the other side but no gate_scale."""
    out = []
    for k in keys_with_scale:
        if k.endswith('.' + _GATE_SCALE) and k not in other:
            prefix = k[: -len(_GATE_SCALE)]
            if any(o.startswith(prefix) for o in other):
                out.append(k)
    return sorted(out)


def _gate_mismatch(model_att: set, ckpt_att: set) -> Tuple[List[str], List[str], List[str]]:
    """(messages, checkpoint gate_scale keys, model gate_scale keys) of modules present on both
    sides whose gate function differs (identity mode's gate_scale on one side only)."""
    trained_identity, trained_paper = _scale_only(ckpt_att, model_att), _scale_only(model_att, ckpt_att)
    out = []
    if trained_identity:
        out.append(
            f"{len(trained_identity)} attention modules of the checkpoint were trained with init_mode='identity' "
            f"(normalised gates; e.g. {trained_identity[:2]}) and the model builds them with the papers' gates: "
            f"set init_mode='identity' in the attention config"
        )
    if trained_paper:
        out.append(
            f"{len(trained_paper)} attention modules of the checkpoint were trained with the papers' gates "
            f"(e.g. {trained_paper[:2]}) and the model builds them with init_mode='identity' (normalised gates): "
            f"set init_mode='scratch' in the attention config to run them as trained"
        )
    return out, trained_identity, trained_paper


def _strip(keys: Iterable[str]) -> List[str]:
    return [k[len('module.') :] if k.startswith('module.') else k for k in keys]


@HOOKS.register_module()
class AttentionKeyCheckHook(Hook):
    """Refuses a checkpoint whose attention keys do not match the model (see the module docstring)."""

    def after_load_checkpoint(self, runner, checkpoint: Dict) -> None:
        state = checkpoint.get('state_dict', checkpoint)
        model = getattr(runner.model, 'module', runner.model)
        message = attention_key_mismatch(
            model.state_dict().keys(), _strip(state.keys()), resuming=bool(getattr(runner, '_resume', False))
        )
        if message:
            raise ValueError(f'checkpoint {runner._load_from or ""}: {message}')
