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
- writes checkpoints atomically (a temporary file, then a rename) and removes the checkpoints that
  ``max_keep_ckpts`` drops only after the new one is complete and ``last_checkpoint`` names it
  (mmengine removes them before it saves), so a kill during a save leaves the previous
  checkpoint in force; ``tools/train.py --resume`` falls back to the newest complete checkpoint
  when ``last_checkpoint`` is missing, empty or stale.

Data order and worker seeds need nothing more: mmengine's samplers shuffle with their own seeded
generator and its ``worker_init_fn`` seeds every worker from (seed, rank, worker id). One exception:
a *persistent* worker of an epoch-based loop carries its random state from one epoch into the next,
where a resumed run starts a fresh worker. The hook therefore turns persistence off for the training
loader of epoch-based loops (one log line): each epoch starts its workers anew, seeded as at the
first epoch (the cost is one worker start per epoch).
"""

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop

__all__ = ['ExactResumeHook', 'random_states', 'set_random_states', 'atomic_local_writes', 'flush_removals']

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
    put, put_text, remove = LocalBackend.put, LocalBackend.put_text, LocalBackend.remove

    def _deferred_remove(self, filepath) -> None:
        if str(filepath).endswith('.pth'):  # a checkpoint max_keep_ckpts drops: after the next save
            _PENDING_REMOVALS.append((self, str(filepath)))
        else:
            remove(self, filepath)

    LocalBackend.remove = _deferred_remove
    LocalBackend._cbam_det_remove = remove

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


_PENDING_REMOVALS: list = []


def flush_removals() -> None:
    """Remove the checkpoints whose removal was deferred (see :func:`atomic_local_writes`)."""
    from mmengine.fileio.backends import LocalBackend

    while _PENDING_REMOVALS:
        backend, path = _PENDING_REMOVALS.pop(0)
        if os.path.isfile(path):
            LocalBackend._cbam_det_remove(backend, path)


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

    def before_run(self, runner) -> None:
        loop = getattr(runner, '_train_loop', None)
        if not isinstance(loop, BaseLoop) or hasattr(loop, 'dataloader_iterator'):
            return  # not training (test, val), or an iteration-based loop (its replay recreates worker states)
        loader = loop.dataloader
        if getattr(loader, 'persistent_workers', False) and loader.num_workers > 0:
            # DataLoader refuses the attribute after construction; nothing has iterated it yet
            object.__setattr__(loader, 'persistent_workers', False)
            runner.logger.info('ExactResumeHook: persistent_workers turned off for the training loader (exact resume)')

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

    # priority LOWEST: after CheckpointHook has saved and written last_checkpoint
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        flush_removals()

    def after_train_epoch(self, runner) -> None:
        flush_removals()

    def after_run(self, runner) -> None:
        flush_removals()

    def before_val(self, runner) -> None:
        self._val_states = random_states()

    def after_val(self, runner) -> None:
        if self._val_states is not None:
            set_random_states(self._val_states)
            self._val_states = None
