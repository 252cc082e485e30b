"""The tree passes the linter configured in pyproject.toml (ruff: pycodestyle, pyflakes, isort,
bugbear, pyupgrade), so that a change that breaks it fails CI."""
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_ruff_passes():
    pytest.importorskip('ruff')
    res = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', REPO], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
