"""Which source checkout the imported ``tlalign_mm`` comes from, for the scripts under ``tools/``.

The tools run over the installed package (``pip install -e .``, which ``tools/setup_env.sh``
does), as mmseg's and mmdet's do; the shell launchers (``tools/dist_train.sh``, ...) put their own
checkout first on ``PYTHONPATH``.  With two clones on one machine, ``python tools/train.py`` in
the second one would silently run the first one's package: :func:`checkout_mismatch` says so.
"""
from __future__ import annotations

import os.path as osp
from typing import Optional

__all__ = ['checkout_root', 'checkout_mismatch']


def checkout_root(path: str) -> Optional[str]:
    """The nearest folder at or above ``path`` that holds ``tlalign_mm/__init__.py`` (a source
    checkout of this project), or ``None`` when there is none (an installed copy of a tool)."""
    folder = osp.dirname(osp.realpath(path)) if not osp.isdir(path) else osp.realpath(path)
    while True:
        if osp.isfile(osp.join(folder, 'tlalign_mm', '__init__.py')):
            return folder
        parent = osp.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def checkout_mismatch(script: str) -> Optional[str]:
    """A one-line warning when the script ``script`` (a path, usually ``__file__``) lies in a
    source checkout whose package is not the ``tlalign_mm`` imported in this process; ``None``
    when they are the same or ``script`` is in no checkout.

    The message names both folders and the two fixes: install this checkout
    (``pip install -e <checkout>``, or ``bash tools/setup_env.sh`` there) or put it first on
    ``PYTHONPATH``.  Nothing is raised: running another checkout's package can be deliberate.
    """
    root = checkout_root(script)
    if root is None:
        return None
    imported = osp.dirname(osp.dirname(osp.realpath(__file__)))          # .../<checkout>/tlalign_mm/utils
    ours = osp.join(root, 'tlalign_mm')
    if osp.realpath(imported) == osp.realpath(ours):
        return None
    return (f'{script} runs tlalign_mm from {imported}, not from its own checkout {ours}: '
            f'run `pip install -e {root}` (or '
            f'`bash tools/setup_env.sh` there), or put {root} first on PYTHONPATH')
