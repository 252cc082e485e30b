"""Auto-resume: the checkpoint a relaunched job continues from (``tools/train.py``'s default ``--resume``)."""
from __future__ import annotations

import contextlib
import os
import re

from ..checkpoint.io import diagnose_checkpoint_file

__all__ = ['find_resumable_checkpoint']

_CKPT_NAME = re.compile(r'^(epoch|iter)_(\d+)(_interrupted)?\.pth$')


def find_resumable_checkpoint(work_dir: str | os.PathLike, log=None) -> str | None:
    """The checkpoint auto-resume continues from: the one ``work_dir/last_checkpoint`` names when
    :func:`~tlalign_mm.checkpoint.io.diagnose_checkpoint_file` passes it, else the newest readable ``epoch_N`` /
    ``iter_N`` / ``iter_N_interrupted.pth`` (latest modified, larger N on a tie; ``log(str)`` says why), or None
    (a fresh start).  Temporary files an interrupted :func:`~tlalign_mm.checkpoint.atomic_save` left are removed."""
    log = log or (lambda msg: None)
    work_dir = os.fspath(work_dir)
    if not os.path.isdir(work_dir):
        return None
    for name in os.listdir(work_dir):
        if name.startswith('.') and name.endswith('.tmp') and _CKPT_NAME.match(name[1:].rsplit('.', 2)[0]):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(work_dir, name))
                log(f'auto-resume: removed {name}, left by an interrupted checkpoint save')
    pointer = os.path.join(work_dir, 'last_checkpoint')
    named = None
    if os.path.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
        if named is None:
            log('auto-resume: last_checkpoint is empty; looking for the newest readable checkpoint')
        elif (reason := diagnose_checkpoint_file(named)) is None:
            return named
        else:
            log(f'auto-resume: {named} (named by last_checkpoint) is {reason}; '
                'looking for the newest readable checkpoint')
    # newest first: by modification time (an epoch count and an iteration count do not compare), then name
    found = sorted(((os.path.getmtime(os.path.join(work_dir, name)), int(m.group(2)), name)
                    for name in os.listdir(work_dir) if (m := _CKPT_NAME.match(name))), reverse=True)
    for *_, name in found:
        path = os.path.join(work_dir, name)
        if os.path.abspath(path) == os.path.abspath(named or ''):
            continue
        if (reason := diagnose_checkpoint_file(path)) is None:
            log(f'auto-resume: resuming from {path}')
            return path
        log(f'auto-resume: skipping {path}: {reason}')
    return None
