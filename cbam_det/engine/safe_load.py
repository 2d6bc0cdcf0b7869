"""Loading checkpoints from elsewhere without running their code.

``torch.load(weights_only=False)`` unpickles arbitrary objects, so a downloaded file can run
code when it is opened. :func:`load_untrusted` reads with ``weights_only=True`` (tensors,
containers, numbers, strings) and, when that fails, names the file and the object it refused
and says how to proceed. :func:`use_safe_checkpoint_loading` routes mmengine's loading of
local files (``load_from``, ``init_cfg=dict(type='Pretrained')``, ``--resume``) through it;
files under the run's own ``work_dir`` were written by this run's tools and are trusted
(mmengine's own checkpoints hold logging objects that ``weights_only`` cannot read).
"""

import os.path as osp
import pickle
import re
from typing import Any, Iterable, Optional

import torch

__all__ = ['UnsafeCheckpointError', 'load_untrusted', 'use_safe_checkpoint_loading']


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects that ``weights_only=True`` refuses to build."""


def load_untrusted(path: str, map_location: Any = 'cpu', unsafe: bool = False, flag: str = '--unsafe-load') -> Any:
    """``torch.load(path, weights_only=True)``; ``unsafe=True`` (the user trusts the file)
    unpickles everything. A refusal raises :class:`UnsafeCheckpointError` naming the file,
    the refused object and ``flag``."""
    if unsafe:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r'GLOBAL ([\w.]+)', text) or re.search(r'Unsupported (?:global|operand)[: ]+(\S+)', text)
        what = found.group(1) if found else text.splitlines()[-1][:200]
        raise UnsafeCheckpointError(
            f'{path}: refused to unpickle {what} (weights_only=True loads tensors, containers, numbers and '
            f'strings only; other objects can run code when a file is opened). If you trust this file, '
            f'pass {flag}; otherwise re-save its state_dict from a trusted environment.'
        ) from None


def _inside(path: str, dirs: Iterable[str]) -> bool:
    path = osp.realpath(path)
    return any(path == d or path.startswith(d.rstrip(osp.sep) + osp.sep) for d in dirs)


def use_safe_checkpoint_loading(trusted_dirs: Iterable[Optional[str]] = (), unsafe: bool = False) -> None:
    """Make mmengine's local-file loader use :func:`load_untrusted` (``weights_only=True``),
    except for files under ``trusted_dirs`` (the run's work_dir) or with ``unsafe=True``."""
    from mmengine.runner.checkpoint import CheckpointLoader

    dirs = [osp.realpath(d) for d in trusted_dirs if d]

    def load_from_local(filename: str, map_location: Any) -> Any:
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        if _inside(filename, dirs):
            return torch.load(filename, map_location=map_location, weights_only=False)
        return load_untrusted(filename, map_location, unsafe=unsafe)

    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
