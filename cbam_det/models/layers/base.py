"""Common base of the attention modules (CBAM, SE, BAM): arguments, initialisation, freezing."""

from typing import Dict, Optional, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import nn

from ... import kernels
from ._utils import check_choice, check_input, check_not_frozen

__all__ = ['AttentionModule', 'INIT_MODES', 'ATTENTION_MODULES']

INIT_MODES = ('scratch', 'identity')
#: every attention module class by its ``_abbr_`` (the attribute name a block gives it, and the
#: string key of ``build_attention``): filled as subclasses are defined, read by the factory and by
#: the checkpoint-key check (cbam_det.engine.attention_keys), so a new module needs no entry elsewhere
ATTENTION_MODULES: Dict[str, type] = {}


class AttentionModule(BaseModule):
    """Base class: ``in_channels`` first, ``init_mode`` / ``allow_frozen``, the gate function.

    ``init_mode='identity'`` (attention added to a network trained without it) makes the module
    the identity at step 0, exactly: every gate is divided by its value at zero logits (the
    ``gate_scale`` buffer, 1 / σ(0) = 2 for CBAM's and SE's gates), and the last layer of each
    gate branch starts at zero, so every gate starts at exactly 1; the gates' last layers get a
    gradient from the first step. ``'scratch'`` keeps the papers' σ gates and the official init.
    Subclasses implement :meth:`_init_special` for what differs from the official default
    init (Kaiming fan-out convs, PyTorch Linear init, BN γ = 1 / β = 0, zero biases).
    """

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        abbr = cls.__dict__.get('_abbr_')
        if abbr is not None:
            known = ATTENTION_MODULES.get(abbr)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise ValueError(f'{cls.__name__}._abbr_={abbr!r} is already the abbreviation of {known.__name__}')
            ATTENTION_MODULES[abbr] = cls
        if 'kernel_setups' in cls.__dict__:  # the self-check, census tools and contract tests run them
            kernels.dispatch.register_kernel_module(cls)

    def __init__(
        self,
        owner: str,
        in_channels: int,
        reduction: int,
        init_mode: str,
        allow_frozen: bool,
        init_cfg: Optional[Union[dict, list]],
        identity_logit: Optional[float] = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        check_choice(owner, 'init_mode', init_mode, INIT_MODES)
        if identity_logit is not None:
            raise ValueError(
                f"{owner}: identity_logit is no longer an argument: init_mode='identity' now starts exactly at the "
                f'identity (gates normalised to 1 at zero logits). A checkpoint trained with the former approximate '
                f"identity (plain sigmoid gates) runs unchanged with init_mode='scratch'."
            )
        self.in_channels = in_channels
        self.reduction = reduction
        self.init_mode = init_mode
        self.allow_frozen = allow_frozen
        self.register_buffer('gate_scale', None)  # set by _normalise_gates in identity mode

    def _normalise_gates(self, value_at_zero: float) -> None:
        """Identity mode: gates are divided by ``value_at_zero``, their value at zero logits
        (a buffer, so that a checkpoint says which gate function it was trained with)."""
        if self.init_mode == 'identity':
            self.gate_scale = torch.tensor(1.0 / value_at_zero)

    def gate(self, logits: torch.Tensor) -> torch.Tensor:
        """σ(logits), divided by σ(0) in identity mode (then 1 at zero logits, range (0, 2))."""
        g = torch.sigmoid(logits)
        return g if self.gate_scale is None else g * self.gate_scale

    def reset_parameters(self) -> None:
        """Apply the ``init_mode`` initialisation (also done by ``init_weights``)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, (nn.Linear, nn.modules.batchnorm._BatchNorm)):
                m.reset_parameters()  # the official code keeps PyTorch's Linear init
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                nn.init.zeros_(m.bias)
        self._init_special()

    # ---- the module <-> kernel contract: the kernels (cbam_det.kernels) read these and nothing else
    #: the kernels' variant of this module ('cbam', 'se', 'bam'), None where they do not cover it
    #: (the ``torch`` backend then runs :meth:`reference`)
    kernel_variant: Optional[str] = None
    #: whether :meth:`forward_with_bn` can fold the preceding BatchNorm into the module's kernels
    fusable_with_bn = False
    #: the caller does not read the input again (subclasses that support it take it as an argument)
    inplace = False
    #: the op family (``kernels/library/<family>.py``) whose ``call`` ``kernels.run`` hands the module
    #: to (None: the module does not call ``kernels.run``; CBAM and SE come through ``kernels.attend``)
    kernel_family: Optional[str] = None
    #: where the paper puts the module in a ResNet: ``'block'`` (every bottleneck, after its last BN)
    #: or ``'stage'`` (between stages, BAM); the analysis tools' networks follow it
    paper_placement = 'block'

    @classmethod
    def kernel_setups(cls, channels: int, inplace: bool = False) -> Dict[str, 'kernels.dispatch.KernelSetup']:
        """The setups the kernels cover, by name: ``{name: KernelSetup(make, with_bn)}``, modules of
        ``channels`` channels (``inplace`` as given). A subclass that defines it is registered with
        the kernels (``kernels.dispatch.register_kernel_module``): the Triton self-check, the census
        tools and the contract tests (``tests/test_kernel_modules.py``) run every setup."""
        raise NotImplementedError(f'{cls.__name__} runs on no kernels')

    def kernel_gates(self) -> Tuple[nn.Module, Optional[nn.Module]]:
        """(channel gate, spatial gate or None): the small graphs the kernels' autograd runs
        between their full-size passes, for the ``'cbam'`` and ``'se'`` variants; the gate
        function is :meth:`gate` and its scale ``gate_scale``."""
        raise NotImplementedError(f'{type(self).__name__} has no gates for the kernels (kernel_variant is None)')

    def forward_with_bn(self, z: torch.Tensor, bn: nn.Module) -> torch.Tensor:
        """``self(bn(z))``: the module applied to the output of the BatchNorm ``bn``.

        CBAM (the paper's configuration) and SE on the ``cpu`` and ``triton`` backends
        compute it in one fused autograd function (``cbam_det.kernels.fused``): the BN output
        is never stored, so the pair costs no more activation memory than the BN alone. On
        ``torch`` it is ``self(bn(z))``. With the module's ``inplace`` (no autograd) the result
        is written into ``z``: callers pass a ``z`` that nothing else reads (a block's last
        conv output).
        """
        if not self.fusable_with_bn:
            return self(bn(z))
        owner = type(self).__name__
        check_input(owner, z, self.in_channels, self.training)
        check_not_frozen(self, owner)
        return kernels.attend(self, z, bn=bn)

    def _init_special(self) -> None:
        """Module-specific part of the initialisation (after the common one)."""

    # ---- what the kernels decide once per module and mode (cbam_det.kernels): dropped when the
    # module moves, changes dtype (``_apply``: .to/.cuda/.half, which replace buffers) or mode
    _KERNEL_CACHES = ('_backend_cache', '_gates_args', '_bam_node', '_frozen_checked')

    def _drop_kernel_caches(self) -> None:
        for m in self.modules():
            for name in AttentionModule._KERNEL_CACHES:
                m.__dict__.pop(name, None)

    def __getstate__(self) -> dict:
        """The module without its kernel caches (they hold the compiled modules' functions, which
        another process could not unpickle): ``torch.save(model)`` and ``copy.deepcopy`` keep only
        what defines the module; the caches are rebuilt at the next call."""
        state = self.__dict__.copy()
        for name in AttentionModule._KERNEL_CACHES:
            state.pop(name, None)
        return state

    def _apply(self, fn, *args, **kwargs):
        self._drop_kernel_caches()
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        if any(m.training != mode for m in self.modules()):  # (a loop may call train() every step)
            self._drop_kernel_caches()
        return super().train(mode)

    def init_weights(self) -> None:
        """``init_mode`` initialisation, then any ``init_cfg`` given by the user."""
        self.reset_parameters()
        super().init_weights()

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, reduction={self.reduction}, init_mode={self.init_mode!r}'
