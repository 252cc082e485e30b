"""Results files: the one home of every measured figure the README and the docs quote.

A measuring tool given ``--results-json PATH`` writes, next to its usual output, one JSON file::

    {
      "tool": "tools/analysis/ab_experiment.py",
      "command": "python tools/analysis/ab_experiment.py --configs ... --seeds 0 1 2",
      "commit": "0123abc...",            # git HEAD of the checkout the tool ran from ("+dirty": edits)
      "date": "2026-12-04T18:02:11Z",    # UTC, when the file was written
      "machine": {"cpu": "...", "cpu_isa": "AVX2", "cores": 2, "gpu": null, "torch": "2.14.1",
                  "python": "3.11.9", "os": "..."},
      "supersedes": null,                # or the date / commit of the run this one replaces
      "tables": {"NAME": {"columns": ["..."], "rows": [["...", "..."], ...]}},
      "values": {...}                    # the raw numbers behind the tables
    }

Published figures (the paper's, a library's model zoo) live in files of the same form with a
``"source"`` (where they are published) instead of the command, commit and machine.

The docs never type a measured number: a Markdown file shows a table from a results file between
two comments, ``<!-- results: docs/results/FILE.json TABLE -->`` and ``<!-- /results -->``, and
``tools/results_tables.py`` writes (or, with ``--check``, compares) what stands between them
with :func:`render_table`.  ``tests/test_docs.py`` fails when a quoted table differs from its file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import os.path as osp
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Optional

__all__ = ['provenance', 'write_results', 'load_results', 'render_table', 'render_provenance', 'table',
           'add_results_arg']

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(['git', '-C', REPO, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpuinfo(field: str) -> Optional[str]:
    """The value of the first ``field`` line of /proc/cpuinfo; None without one (or without the file)."""
    try:
        with open('/proc/cpuinfo') as f:
            return next((ln.split(':', 1)[1].strip() for ln in f if ln.startswith(field)), None)
    except OSError:
        return None


def _cpu_name() -> str:
    return _cpuinfo('model name') or platform.processor() or platform.machine()


def _cpu_isa() -> Optional[str]:
    """The vector units that pick the CPU's float kernels (ATen's, oneDNN's), from /proc/cpuinfo's flags:
    ``'AVX-512'`` (avx512f / bw / vl / dq, as ATen's AVX512 capability needs), else ``'AVX2'``, else
    ``'no AVX2'``, with ``'+ AVX512-BF16'`` / ``'+ AMX'`` where present; None where there are no x86 flags.
    Two CPUs of one name can differ here, and so can the last digits of what they train."""
    if (line := _cpuinfo('flags')) is None:
        return None
    flags = set(line.split())
    base = ('AVX-512' if {'avx512f', 'avx512bw', 'avx512vl', 'avx512dq'} <= flags
            else 'AVX2' if 'avx2' in flags else 'no AVX2')
    return ' + '.join([base] + [name for flag, name in (('avx512_bf16', 'AVX512-BF16'), ('amx_tile', 'AMX'))
                                if flag in flags])


def _gpu_name() -> Optional[str]:
    torch = sys.modules.get('torch')        # only asked when the tool already imported torch
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return None


def provenance(argv: Optional[Sequence[str]] = None, tool: Optional[str] = None) -> dict:
    """Who made a result: the command line, the commit, the date and the machine.

    Args:
        argv: the tool's arguments (default ``sys.argv[1:]``).
        tool: the tool's path relative to the repository (default: from ``sys.argv[0]``).
    Returns:
        dict with ``tool``, ``command``, ``commit`` (``None`` outside a git checkout; ``+dirty``
        appended when tracked files differ from the commit), ``date`` (UTC, ISO 8601) and
        ``machine`` (cpu, cpu_isa (:func:`_cpu_isa`), cores, gpu, torch, python, os).
    """
    tool = tool or osp.relpath(osp.abspath(sys.argv[0]), REPO)
    argv = list(sys.argv[1:] if argv is None else argv)
    commit = _git('rev-parse', 'HEAD')
    if commit is not None and _git('status', '--porcelain', '--untracked-files=no'):
        commit += '+dirty'
    torch = sys.modules.get('torch')
    return {
        'tool': tool,
        'command': shlex.join([{'.py': 'python', '.sh': 'bash'}.get(osp.splitext(tool)[1], tool), tool, *argv]
                              if tool.endswith(('.py', '.sh')) else [tool, *argv]),
        'commit': commit,
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
        'machine': {
            'cpu': _cpu_name(),
            'cpu_isa': _cpu_isa(),
            'cores': os.cpu_count(),
            'gpu': _gpu_name(),
            'torch': getattr(torch, '__version__', None),
            'python': platform.python_version(),
            'os': platform.platform(),
        },
    }


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict:
    """A results table: ``columns`` and ``rows`` of already formatted cells (strings).

    Raises:
        ValueError: a row whose length differs from the number of columns.
    """
    rows = [[str(c) for c in r] for r in rows]
    for r in rows:
        if len(r) != len(columns):
            raise ValueError(f'a results row has {len(r)} cells for {len(columns)} columns: {r}')
    return {'columns': [str(c) for c in columns], 'rows': rows}


def write_results(path: str, tables: Mapping[str, dict], values: Optional[Mapping] = None, *,
                  argv: Optional[Sequence[str]] = None, tool: Optional[str] = None,
                  supersedes: Optional[str] = None, notes: Optional[str] = None) -> dict:
    """Write a results file (module docstring) atomically; returns what it wrote.

    Args:
        path: the ``.json`` file (its folder is created).
        tables: ``{name: table(...)}``, what the docs show.
        values: the raw numbers behind the tables (JSON-serialisable).
        argv, tool: passed to :func:`provenance`.
        supersedes: the date or commit of the earlier run this one replaces, if any.
        notes: one line on the conditions (e.g. "other jobs shared the machine").
    Raises:
        ValueError: ``path`` does not end with ``.json``.
    """
    if not path.endswith('.json'):
        raise ValueError(f'--results-json must name a .json file, got {path!r}')
    doc = provenance(argv, tool)
    doc.update(supersedes=supersedes, notes=notes, tables=dict(tables), values=dict(values or {}))
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write('\n')
    os.replace(tmp, path)
    return doc


def load_results(path: str) -> dict:
    """Read a results file; raises ``ValueError`` naming the file when a required key is missing."""
    with open(path) as f:
        doc = json.load(f)
    need = ('source', 'date', 'tables') if 'source' in doc else ('command', 'commit', 'date', 'machine', 'tables')
    missing = [k for k in need if k not in doc]
    if missing:
        raise ValueError(f'{path}: not a results file, missing {missing}')
    return doc


def _cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def render_table(tab: Mapping) -> str:
    """The Markdown (GFM / MyST) table of one results table."""
    cols = tab['columns']
    lines = ['| ' + ' | '.join(_cell(c) for c in cols) + ' |', '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(_cell(c) for c in r) + ' |' for r in tab['rows']]
    return '\n'.join(lines)


def render_provenance(doc: Mapping, path: str) -> str:
    """One line under a quoted table: the file, the date, the commit and the machine.

    A file of published figures (``"source"`` instead of ``"command"``, e.g. ``docs/results/paper.json``)
    names its source instead.
    """
    if 'source' in doc:
        return f"*Source: `{path}`: {doc['source']}.*"
    m = doc.get('machine') or {}
    where = m.get('gpu') or (m.get('cpu') or 'unknown machine') + (f" ({m['cpu_isa']})" if m.get('cpu_isa') else '')
    cores = f", {m['cores']} cores" if m.get('cores') and not m.get('gpu') else ''
    commit = (doc.get('commit') or 'no commit')[:12]
    line = f"*Source: `{path}`, {doc['date'][:10]}, commit {commit}, {where}{cores}"
    if doc.get('supersedes'):
        line += f"; supersedes the run of {doc['supersedes']}"
    return line + '.*'


def _json_path(value: str) -> str:
    """argparse ``type`` of ``--results-json``: refused at parsing, before any work, unless it names a .json
    file that can be written (``tools/config_checks.py``'s ``writable_file``)."""
    from config_checks import writable_file  # tools/: on sys.path in every tool that parses --results-json
    if not value.endswith('.json'):
        raise argparse.ArgumentTypeError(f'must name a .json file, got {value!r}')
    return writable_file(value)


def add_results_arg(parser) -> None:
    """The ``--results-json PATH`` option every measuring tool takes."""
    parser.add_argument('--results-json', default=None, metavar='PATH', type=_json_path,
                        help='also write the figures with the command, commit, date and machine to this JSON '
                             'file (tools/analysis/results_file.py), the file the docs quote them from')
