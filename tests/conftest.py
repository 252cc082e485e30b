import os

import pytest
import torch

# Deterministic, single-threaded-enough defaults for CPU tests.
torch.manual_seed(0)
os.environ.setdefault('OMP_NUM_THREADS', '2')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root():
    return REPO
