"""CPU runs never oversubscribe the cores: torch threads × processes ≤ cores, workers included."""

import pytest
import torch
from mmengine.config import Config

from cbam_det.engine import set_cpu_threads, thread_budget

from .helpers import DEMO_CONFIG


def test_thread_budget_counts_processes_and_workers():
    assert thread_budget(1, 0, cores=2) == 2
    assert thread_budget(2, 0, cores=2) == 1  # two ranks on two cores
    assert thread_budget(1, 1, cores=2) == 1  # one loader worker takes a core
    assert thread_budget(1, 8, cores=2) == 1
    assert thread_budget(4, 1, cores=16) == 3
    with pytest.raises(ValueError, match='processes must be >= 1'):
        thread_budget(0, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the budget applies to CPU runs')
def test_set_cpu_threads_follows_the_budget_unless_told(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
        monkeypatch.delenv('CBAM_DET_THREADS', raising=False)
        monkeypatch.setenv('LOCAL_WORLD_SIZE', '1')
        assert set_cpu_threads(workers=0) == thread_budget(1, 0) == torch.get_num_threads()
        monkeypatch.setenv('OMP_NUM_THREADS', '1')  # the user's (or torchrun's) word stands
        assert set_cpu_threads(workers=0) is None
        monkeypatch.setenv('CBAM_DET_THREADS', '1')
        assert set_cpu_threads(workers=3) == 1 == torch.get_num_threads()
        monkeypatch.setenv('CBAM_DET_THREADS', '0')
        with pytest.raises(ValueError, match='CBAM_DET_THREADS'):
            set_cpu_threads()
    finally:
        torch.set_num_threads(before)


def test_the_demo_loads_data_in_the_training_process():
    """On two cores a loader worker would take one core from the two torch threads."""
    cfg = Config.fromfile(DEMO_CONFIG)
    assert cfg.train_dataloader.num_workers == 0 and cfg.val_dataloader.num_workers == 0
