"""Shared by the organism tests."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these tiny ops run 10x slower when two threads fight over shared CPU cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
