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


def test_one_pinned_ruff():
    """The linter that runs here is the one requirements/constraints.txt pins, and pre-commit runs that one."""
    pytest.importorskip('ruff')
    import re
    pin = re.search(r'^ruff==(\S+)', open(osp.join(REPO, 'requirements', 'constraints.txt')).read(), re.M)
    assert pin, 'requirements/constraints.txt pins no ruff version'
    out = subprocess.run([sys.executable, '-m', 'ruff', '--version'], capture_output=True, text=True).stdout
    assert out.split()[-1] == pin.group(1), f'ruff {out.strip()} runs, constraints.txt pins {pin.group(1)}'
    hooks = open(osp.join(REPO, '.pre-commit-config.yaml')).read()
    assert 'ruff-pre-commit' not in hooks and '.venv/bin/python -m ruff' in hooks, \
        'pre-commit must run the pinned ruff from .venv, not its own copy'
