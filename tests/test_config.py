"""One home for switches (cbam_det/config.py reads every CBAM_DET_* variable, nothing else reads
the environment) and one source for module names (each module's ``_abbr_`` feeds the string
factory and the checkpoint-key check)."""

import os
import os.path as osp
import re
import subprocess

import pytest
import torch
from mmdet.registry import MODELS
from torch import nn

from cbam_det import config
from cbam_det.engine.attention_keys import attention_key_mismatch, attention_keys
from cbam_det.models.layers import ATTENTION_MODULES, AttentionModule, build_attention

from .helpers import REPO


def test_only_the_config_module_reads_the_environment():
    out = subprocess.run(
        ['grep', '-rn', '--include=*.py', 'os.environ\\|getenv', 'cbam_det/'], cwd=REPO, capture_output=True, text=True
    ).stdout
    files = {line.split(':', 1)[0] for line in out.splitlines()}
    assert files == {'cbam_det/config.py'}, out


def test_every_variable_is_read_by_config_and_documented():
    """Every CBAM_DET_* name in the package is one config.py documents, and docs/tools.md lists it."""
    names = set()
    for path in subprocess.run(
        ['git', 'ls-files', 'cbam_det'], cwd=REPO, capture_output=True, text=True
    ).stdout.split():
        if path.endswith(('.py', '.cpp')):
            names |= set(re.findall(r'CBAM_DET_[A-Z_]+', open(osp.join(REPO, path)).read()))
    table = open(osp.join(REPO, 'cbam_det', 'config.py')).read().split('"""')[1]
    tools = open(osp.join(REPO, 'docs', 'tools.md')).read()
    for name in sorted(names):
        assert name in table, f"{name} is not in config.py's table"
        assert f'`{name}`' in tools, f'{name} is not listed in docs/tools.md'


def test_switches_follow_the_environment_and_their_setters(monkeypatch):
    monkeypatch.delenv('CBAM_DET_BACKEND', raising=False)
    assert config.get_backend() == 'auto'
    monkeypatch.setenv('CBAM_DET_BACKEND', 'torch')
    assert config.get_backend() == 'torch'
    with config.use_backend('cpu'):
        assert config.get_backend() == 'cpu'
    assert config.get_backend() == 'torch'
    monkeypatch.setenv('CBAM_DET_CHECK_FINITE', '1')
    assert config.check_finite()
    previous = config.set_check_finite(False)
    try:
        assert previous is None and not config.check_finite()
        assert config.set_check_finite(True) is False and config.check_finite()
    finally:
        config.set_check_finite(previous)  # passing the previous setting back restores it
    assert config.check_finite()
    monkeypatch.setenv('CBAM_DET_CHECK_FINITE', '0')
    assert not config.check_finite()  # following the variable again
    for name, fn in (('CBAM_DET_NO_EXT', config.no_ext), ('CBAM_DET_CHECK_FINITE', config.check_finite)):
        monkeypatch.setenv(name, 'yes')
        with pytest.raises(ValueError, match=rf"{name}='yes'; allowed: 0 or 1"):
            fn()
        monkeypatch.delenv(name)
    monkeypatch.setenv('CBAM_DET_THREADS', '0')
    with pytest.raises(ValueError, match='CBAM_DET_THREADS=.0.: must be a positive integer'):
        config.threads()
    monkeypatch.setenv('CBAM_DET_CACHE', '/tmp/x')
    monkeypatch.delenv('CBAM_DET_EXT_DIR', raising=False)
    assert config.ext_dir() == '/tmp/x/ext'


def test_a_new_module_is_seen_by_the_factory_and_the_checkpoint_check():
    """A module defined elsewhere (a user's ECA, say) with an ``_abbr_``: build_attention takes its
    key and the checkpoint check sees its keys, with no edit to cbam_det's files."""

    class TinyGate(AttentionModule):
        """A test module: x ⊗ σ(w)."""

        _abbr_ = 'tinygate'

        def __init__(self, in_channels: int, reduction: int = 1) -> None:
            super().__init__('TinyGate', in_channels, reduction, 'scratch', False, None)
            self.w = nn.Parameter(torch.zeros(in_channels, 1, 1))

        def forward(self, x):
            return x * torch.sigmoid(self.w)

    MODELS.register_module(module=TinyGate)
    try:
        assert ATTENTION_MODULES['tinygate'] is TinyGate
        assert isinstance(build_attention('tinygate', 8), TinyGate)
        keys = ['backbone.layer1.0.conv1.weight', 'backbone.layer1.0.tinygate.w', 'backbone.layer2.0.tinygate2.w']
        assert attention_keys(keys) == keys[1:]
        msg = attention_key_mismatch(['backbone.layer1.0.conv1.weight'], keys, resuming=False)
        assert msg and 'tinygate.w' in msg and "type='TinyGate'" in msg
    finally:
        MODELS._module_dict.pop('TinyGate', None)
        ATTENTION_MODULES.pop('tinygate', None)
    with pytest.raises(ValueError, match=r"_abbr_='cbam' is already the abbreviation of CBAM"):

        class Clash(AttentionModule):
            _abbr_ = 'cbam'


@pytest.mark.parametrize('fast', [True, False], ids=['environ_data', 'environ_get'])
def test_env_reads_what_os_environ_holds_now(monkeypatch, fast):
    """``config.env`` reads CPython's ``os.environ._data`` where it has that layout, else
    ``os.environ.get``: both give what the environment holds at the call (set, changed, empty,
    removed), as ``os.environ.get(name) or default``."""
    assert config._FAST_ENV == config._raw_environ_ok()
    if fast and not config._FAST_ENV:
        pytest.skip("this Python's os.environ has no _data layout")
    monkeypatch.setattr(config, '_FAST_ENV', fast)
    name = 'CBAM_DET_TEST_ENV_READ'
    monkeypatch.delenv(name, raising=False)
    assert config.env(name) is None and config.env(name, 'x') == 'x'
    for value in ('1', 'täst', '0', ''):
        monkeypatch.setenv(name, value)
        assert config.env(name, 'x') == (os.environ.get(name) or 'x') == (value or 'x')
    monkeypatch.delenv(name)
    assert config.env(name, 'x') == 'x'
    monkeypatch.setenv('CBAM_DET_BACKEND', 'cpu')
    assert config.get_backend() == 'cpu'
    monkeypatch.setenv('CBAM_DET_BACKEND', 'torch')
    assert config.get_backend() == 'torch'
