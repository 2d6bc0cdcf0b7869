"""Attention after any module of any detector, from its stock config (CBAM paper, Sec. 3:
"CBAM can be seamlessly integrated into any CNN architectures").

mmdet 3.x only lets ResNet-family backbones take ``plugins``; CSPDarknet (YOLOX), CSPNeXt
(RTMDet), MobileNetV2, SSDVGG and every neck have no hook. :func:`AttentionInserted` builds
the stock detector and attaches an attention module to each target module, found by its
dotted module path with shell-style patterns per path segment::

    _base_ = 'mmdet::yolox/yolox_s_8xb8-300e_coco.py'
    custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)
    model = dict(_delete_=True, type='AttentionInserted', detector={{_base_.model}},
                 attention=dict(type='CBAM'), targets=['backbone.stage[1-4]', 'neck.out_convs.*'])

- The channel counts are read off a probe forward (``extract_feat`` on a zero image, plus
  the dense heads when a target is a head's input), not typed by the user.
- A target that returns a tuple/list of feature maps gets one module per element, each
  with that element's channels (per-level attention).
- ``position='output'`` (default) refines what the module returns (a forward hook);
  ``'input'`` refines its first argument (a forward pre-hook), e.g. a head's inputs.
- The original modules are untouched, so their state-dict names, and stock pretrained
  checkpoints, load unchanged. The new modules live under ``attention_inserts.<path>``
  (dots of the path written as ``__``), stable across builds.
- Everything is decided at build time: the modules sit outside the backbone, so
  ``frozen_stages`` and ``norm_eval`` do not reach them and DDP sees every parameter as
  trainable from the start.
"""

import fnmatch
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmdet.registry import MODELS
from mmengine.config import ConfigDict
from mmengine.logging import print_log
from torch import nn

from .layers.factory import build_attention

__all__ = ['AttentionInserted', 'insert_attention', 'match_modules']

POSITIONS = ('output', 'input')
_HEADS = ('bbox_head', 'rpn_head')


def match_modules(model: nn.Module, pattern: str) -> List[str]:
    """Names of the submodules whose dotted path matches ``pattern`` segment by segment
    (``*``, ``?`` and ``[...]`` act within one segment: ``neck.out_convs.*`` matches
    ``neck.out_convs.0`` but not ``neck.out_convs.0.conv``)."""
    parts = pattern.split('.')
    names = []
    for name, _ in model.named_modules():
        segs = name.split('.') if name else []
        if len(segs) == len(parts) and all(fnmatch.fnmatchcase(s, p) for s, p in zip(segs, parts)):
            names.append(name)
    return names


def _key(path: str) -> str:
    return path.replace('.', '__')


def _maps(value) -> Tuple[List[torch.Tensor], bool]:
    """The feature maps in a module's output (or input): [tensor] or the tuple/list's elements."""
    if isinstance(value, torch.Tensor):
        return [value], False
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return list(value), True
    raise TypeError(f'expected a tensor or a tuple/list of tensors, got {type(value).__name__}')


class _Apply:
    """Forward (pre-)hook that refines the feature map(s) with the attached attention."""

    def __init__(self, attention: nn.Module, position: str) -> None:
        self.attention, self.position = attention, position

    def refine(self, value):
        if isinstance(value, torch.Tensor):
            return self.attention(value)
        out = [att(v) for att, v in zip(self.attention, value)]
        return type(value)(out)

    def __call__(self, module: nn.Module, args: tuple, output=None):
        if self.position == 'input':
            return (self.refine(args[0]),) + tuple(args[1:])
        return self.refine(output)


def _probe(model: nn.Module, paths: Dict[str, str], size: Tuple[int, int]) -> Dict[str, Tuple[List[int], bool]]:
    """(channels, is a tuple/list) of each target's output (or input), from a forward on a zero image."""
    seen: Dict[str, Tuple[List[int], bool]] = {}
    handles = []
    modules = dict(model.named_modules())
    for path, position in paths.items():

        def record(module, args, output=None, path=path, position=position):
            value = args[0] if position == 'input' else output
            try:
                maps, is_seq = _maps(value)
            except TypeError as e:
                raise TypeError(f'AttentionInserted: target {path!r} ({position}): {e}') from None
            if any(m.dim() != 4 for m in maps):
                raise ValueError(
                    f'AttentionInserted: target {path!r} ({position}) gives tensors of shapes '
                    f'{[tuple(m.shape) for m in maps]}; attention needs (N, C, H, W) feature maps'
                )
            seen.setdefault(path, ([m.shape[1] for m in maps], is_seq))

        mod = modules[path]
        handles.append(
            mod.register_forward_pre_hook(record) if position == 'input' else mod.register_forward_hook(record)
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next((p.device for p in model.parameters()), torch.device('cpu'))
            feats = model.extract_feat(torch.zeros(1, 3, *size, device=device))
            for head in _HEADS:
                if any(p == head or p.startswith(head + '.') for p in paths) and getattr(model, head, None):
                    getattr(model, head)(feats)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [p for p in paths if p not in seen]
    if missing:
        raise ValueError(
            f'AttentionInserted: targets {missing} did not run during the probe forward (extract_feat, '
            f'then {" / ".join(_HEADS)} on its features); pick modules on that path'
        )
    return seen


def insert_attention(
    model: nn.Module,
    targets: Sequence[Union[str, dict]],
    attention: Optional[dict] = None,
    probe_size: Tuple[int, int] = (256, 256),
) -> nn.Module:
    """Attach attention modules to ``model`` in place (see the module docstring); returns it.

    ``targets``: patterns (str) or dicts ``dict(path=..., attention=..., position=...)``
    overriding ``attention`` (default ``dict(type='CBAM')``) and ``position``.
    """
    if hasattr(model, 'attention_inserts'):
        raise ValueError('AttentionInserted: the model already has attention_inserts; insert once')
    if not targets:
        raise ValueError('AttentionInserted: targets is empty; give module path patterns, e.g. "backbone.stage*"')
    default = dict(type='CBAM') if attention is None else attention
    specs: Dict[str, Tuple[dict, str]] = {}
    for t in targets:
        t = dict(path=t) if isinstance(t, str) else dict(t)
        unknown = set(t) - {'path', 'attention', 'position'}
        if 'path' not in t or unknown:
            raise ValueError(
                f'AttentionInserted: a target is a pattern string or dict(path=..., attention=..., '
                f'position=...); got {t}'
            )
        position = t.get('position', 'output')
        if position not in POSITIONS:
            raise ValueError(f"AttentionInserted: unknown position={position!r}; allowed: 'output', 'input'")
        names = [n for n in match_modules(model, t['path']) if n]
        if not names:
            top = sorted({n.split('.')[0] for n, _ in model.named_modules() if n})
            raise ValueError(f'AttentionInserted: target {t["path"]!r} matches no module; top-level modules: {top}')
        for n in names:
            specs[n] = (t.get('attention', default), position)
    channels = _probe(model, {p: pos for p, (_, pos) in specs.items()}, tuple(probe_size))
    model.attention_inserts = nn.ModuleDict()
    modules = dict(model.named_modules())
    for path, (cfg, position) in specs.items():
        chans, is_seq = channels[path]
        att = nn.ModuleList(build_attention(cfg, c) for c in chans) if is_seq else build_attention(cfg, chans[0])
        model.attention_inserts[_key(path)] = att
        hook = _Apply(att, position)
        if position == 'input':
            modules[path].register_forward_pre_hook(hook)
        else:
            modules[path].register_forward_hook(hook)
    print_log(
        f'cbam_det: inserted attention at {len(specs)} modules ({", ".join(specs)}); '
        f'{sum(p.numel() for p in model.attention_inserts.parameters()):,} parameters, all trainable',
        logger='current',
    )
    return model


@MODELS.register_module()
def AttentionInserted(  # noqa: N802  (a registry type name, used as type='AttentionInserted')
    detector: dict,
    targets: Sequence[Union[str, dict]],
    attention: Optional[dict] = None,
    probe_size: Tuple[int, int] = (256, 256),
    data_preprocessor: Optional[dict] = None,
) -> nn.Module:
    """Build ``detector`` (any mmdet model config) and insert attention at ``targets``.

    ``data_preprocessor``, as tools that build a model config give it (mmdeploy's task
    processors add one to the top level): a non-empty one replaces the detector's, an empty
    one (mmdeploy's default) leaves the detector's in force.
    """
    detector = dict(detector)
    if data_preprocessor:
        detector['data_preprocessor'] = data_preprocessor
    # nested configs as ConfigDict (attribute access), as the runner's own config gives them
    return insert_attention(MODELS.build(ConfigDict(detector)), targets, attention, probe_size)
