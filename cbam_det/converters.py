"""Key mapping from the authors' official CBAM/BAM ImageNet checkpoints to cbam_det backbones.

Official code (ResNet-50 + CBAM, top-1 77.62; ResNet-50 + BAM, top-1 76.86) saves
``{'epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer'}`` with DataParallel's
``module.`` prefix and torchvision ResNet names. Targets: :class:`AttnResNet` with
``attention=dict(type='CBAM', spatial_pool='max_avg')`` (official [max; mean] order) or
``bam=dict(type='BAM', combine='product')`` (official x · (1 + σ(C·S))).
"""

import re
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch

__all__ = ['convert_official_state_dict', 'OFFICIAL_CONFIGS']

#: the backbone arguments that reproduce the official forward
OFFICIAL_CONFIGS = {
    'cbam': dict(attention=dict(type='CBAM', spatial_pool='max_avg')),
    'bam': dict(bam=dict(type='BAM', combine='product')),
}

_RESNET = re.compile(
    r'^(conv1\.weight|bn1\.(weight|bias|running_mean|running_var|num_batches_tracked)'
    r'|layer\d+\.\d+\.(conv\d\.weight|bn\d\.\w+|downsample\.[01]\.\w+))$'
)
_RULES: List[Tuple[re.Pattern, str]] = [
    (re.compile(p), r)
    for p, r in [
        (r'^(layer\d+\.\d+)\.cbam\.ChannelGate\.mlp\.1\.(weight|bias)$', r'\1.cbam.channel_gate.fc1.\2'),
        (r'^(layer\d+\.\d+)\.cbam\.ChannelGate\.mlp\.3\.(weight|bias)$', r'\1.cbam.channel_gate.fc2.\2'),
        (r'^(layer\d+\.\d+)\.cbam\.SpatialGate\.spatial\.conv\.weight$', r'\1.cbam.spatial_gate.conv.weight'),
        (r'^(layer\d+\.\d+)\.cbam\.SpatialGate\.spatial\.bn\.(\w+)$', r'\1.cbam.spatial_gate.bn.\2'),
        (r'^(bam\d)\.channel_att\.gate_c\.gate_c_fc_0\.(weight|bias)$', r'\1.channel_att.fc1.\2'),
        (r'^(bam\d)\.channel_att\.gate_c\.gate_c_bn_1\.(\w+)$', r'\1.channel_att.bn.\2'),
        (r'^(bam\d)\.channel_att\.gate_c\.gate_c_fc_final\.(weight|bias)$', r'\1.channel_att.fc2.\2'),
        (r'^(bam\d)\.spatial_att\.gate_s\.gate_s_conv_reduce0\.(weight|bias)$', r'\1.spatial_att.reduce.\2'),
        (r'^(bam\d)\.spatial_att\.gate_s\.gate_s_bn_reduce0\.(\w+)$', r'\1.spatial_att.reduce_bn.\2'),
        (r'^(bam\d)\.spatial_att\.gate_s\.gate_s_conv_di_(\d+)\.(weight|bias)$', r'\1.spatial_att.dilated.\2.\3'),
        (r'^(bam\d)\.spatial_att\.gate_s\.gate_s_bn_di_(\d+)\.(\w+)$', r'\1.spatial_att.dilated_bn.\2.\3'),
        (r'^(bam\d)\.spatial_att\.gate_s\.gate_s_conv_final\.(weight|bias)$', r'\1.spatial_att.final.\2'),
    ]
]
_DROPPED = re.compile(r'^fc\.(weight|bias)$')  # ImageNet classifier: no place in a detector backbone


def convert_official_state_dict(
    state: Dict[str, torch.Tensor],
) -> Tuple['OrderedDict[str, torch.Tensor]', List[str], str]:
    """Map an official state dict to cbam_det names.

    Returns ``(new_state, dropped_keys, kind)`` with ``kind`` 'cbam', 'bam' or 'plain'.
    Adds ``num_batches_tracked = 0`` for BatchNorms saved without it (PyTorch < 0.4.1),
    so that loading reports no missing key. Raises ``KeyError`` listing every key that
    has no place in the target backbone.
    """
    new, dropped, unknown = OrderedDict(), [], []
    for key, value in state.items():
        k = key[len('module.') :] if key.startswith('module.') else key
        if _DROPPED.match(k):
            dropped.append(key)
            continue
        if _RESNET.match(k):
            new[k] = value
            continue
        for pattern, repl in _RULES:
            if pattern.match(k):
                new[pattern.sub(repl, k)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(
            f'{len(unknown)} checkpoint keys have no place in the cbam_det backbone '
            f'(not torchvision ResNet, official CBAM or official BAM names): {unknown}'
        )
    for k in [k for k in new if k.endswith('.running_var')]:
        new.setdefault(k[: -len('running_var')] + 'num_batches_tracked', torch.tensor(0, dtype=torch.long))
    kind = 'cbam' if any('.cbam.' in k for k in new) else 'bam' if any(k.startswith('bam') for k in new) else 'plain'
    return new, dropped, kind
