"""Exact resume: a killed training, resumed with ``--resume``, ends where it would have ended.

mmengine restores the model, optimizer, schedulers and iteration count, and replays the
data loader, but no random state: the RPN/RoI samplers, random augmentations and data-loader
seeds then draw other numbers than the uninterrupted run would have. :class:`ExactResumeHook`
(one config line: ``custom_hooks = [dict(type='ExactResumeHook')]``):

- saves the random states (python, numpy, torch, CUDA) into every checkpoint;
- restores them where the uninterrupted run stood when it saved: for an epoch-based loop right
  after loading, for an iteration-based loop right after mmengine's replay of the data loader
  (which itself draws random numbers in the pipeline);
- keeps validation from moving the training random state (the validation loader's seed is
  drawn from torch's generator), so resuming need not replay validations;
- writes checkpoints and ``last_checkpoint`` atomically (a temporary file, then a rename), so a
  kill during a write leaves the previous checkpoint in force.

Data order and worker seeds need nothing more: mmengine's samplers shuffle with their own seeded
generator and its ``worker_init_fn`` seeds every worker from (seed, rank, worker id).
"""

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ['ExactResumeHook', 'random_states', 'set_random_states', 'atomic_local_writes']

KEY = 'cbam_det_random_states'


def random_states() -> Dict[str, Any]:
    """The python, numpy, torch (and CUDA) random states."""
    states = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: Dict[str, Any]) -> None:
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'].cpu() if torch.is_tensor(states['torch']) else states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def atomic_local_writes() -> None:
    """Make mmengine's local file backend write through a temporary file and a rename (once)."""
    from mmengine.fileio.backends import LocalBackend

    if getattr(LocalBackend, '_cbam_det_atomic', False):
        return
    put, put_text = LocalBackend.put, LocalBackend.put_text

    def _atomic(write, self, obj, filepath, *args, **kwargs):
        filepath = str(filepath)
        tmp = f'{filepath}.tmp-{os.getpid()}'
        write(self, obj, tmp, *args, **kwargs)
        os.replace(tmp, filepath)

    LocalBackend.put = lambda self, obj, filepath: _atomic(put, self, obj, filepath)
    LocalBackend.put_text = lambda self, obj, filepath, encoding='utf-8': _atomic(
        put_text, self, obj, filepath, encoding=encoding
    )
    LocalBackend._cbam_det_atomic = True


class _RestoreAfter:
    """Wraps the iteration-based loop's data iterator: after the first ``n`` batches (mmengine's
    replay on resume, by ``next`` or ``skip_iter``) it restores the saved random states."""

    def __init__(self, inner, n: int, states: Dict[str, Any]) -> None:
        self.inner, self.left, self.states = inner, n, states

    def _consumed(self, k: int) -> None:
        if self.states is not None:
            self.left -= k
            if self.left <= 0:
                set_random_states(self.states)
                self.states = None

    def __iter__(self):
        return self

    def __next__(self):
        data = next(self.inner)
        self._consumed(1)
        return data

    def skip_iter(self, n: int) -> None:
        self.inner.skip_iter(n)
        self._consumed(n)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Save and restore the random states so that ``--resume`` continues bit-identically
    (see the module docstring). Runs last, so that it sees the state after every other hook."""

    priority = 'LOWEST'

    def __init__(self) -> None:
        atomic_local_writes()
        self._pending: Optional[Dict[str, Any]] = None
        self._val_states: Optional[Dict[str, Any]] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[KEY] = random_states()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if KEY not in checkpoint:
            runner.logger.warning('ExactResumeHook: the checkpoint holds no random states; the resume is not exact')
            return
        self._pending = checkpoint[KEY]

    def before_train(self, runner) -> None:
        # after load: checkpoint-loading may be a plain load_from (no resume), then nothing is restored
        if self._pending is None or not runner._has_loaded or not getattr(runner, '_resume', False):
            self._pending = None
            return
        loop = runner.train_loop
        if hasattr(loop, 'dataloader_iterator') and loop.iter > 0:  # iteration-based: after the replay
            loop.dataloader_iterator = _RestoreAfter(loop.dataloader_iterator, loop.iter, self._pending)
        else:
            set_random_states(self._pending)
        self._pending = None

    def before_val(self, runner) -> None:
        self._val_states = random_states()

    def after_val(self, runner) -> None:
        if self._val_states is not None:
            set_random_states(self._val_states)
            self._val_states = None
