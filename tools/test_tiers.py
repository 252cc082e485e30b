"""Time the test suite's two tiers and write what they took to a results file.

    python tools/test_tiers.py --results-json docs/results/test_tiers.json

runs, one after the other, in this checkout's interpreter:

* the fast tier, ``python -m pytest tests -q -n auto -m "not slow"`` (unit tests, no training runs);
* the whole suite, README's test command ``python -m pytest tests -q -n auto``.

Both run on every core with pytest-xdist, a test file to a worker (``--dist loadfile`` in
``pyproject.toml``), each worker with its share of the threads (``tests/conftest.py``).

``--fast-only`` or ``--whole-only`` runs one of them.

Each row gives the command, what pytest's summary line counts (passed, failed, skipped, ...) and the
wall time in minutes. The exit status is 1 when either tier fails, so a timing of a red suite is never
mistaken for a green one; the results file is written either way, with the failures counted.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import time

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), 'analysis'))
from results_file import add_results_arg, table, write_results  # noqa: E402  (tools/analysis/results_file.py)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TIERS = (('fast tier', ['-n', 'auto', '-m', 'not slow']), ('whole suite', ['-n', 'auto']))


def summary_counts(output: str) -> dict[str, int]:
    """The counts of pytest's last summary line (``== 3 passed, 1 skipped in 2.0s ==``).

    Raises:
        ValueError: the output has no summary line (pytest did not finish).
    """
    lines = [ln for ln in output.splitlines() if re.search(r'\d+ (passed|failed|error)', ln) and ' in ' in ln]
    if not lines:
        raise ValueError('pytest printed no summary line; the run did not finish')
    return {word: int(n) for n, word in re.findall(r'(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)',
                                                   lines[-1])}


def run_tier(args: list[str], results_json: str | None) -> tuple[dict[str, int], float, int]:
    cmd = [sys.executable, '-m', 'pytest', 'tests', '-q', '-p', 'no:cacheprovider', *args]
    env = dict(os.environ)
    if results_json:    # the docs quote the file this run writes: tests/test_docs.py skips that one quote
        env['TLALIGN_RESULTS_IN_PROGRESS'] = osp.relpath(osp.abspath(results_json), REPO)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    sys.stdout.write(out.stdout if out.returncode else out.stdout[-3000:])   # a failure: its traceback too
    return summary_counts(out.stdout), wall, out.returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    one = p.add_mutually_exclusive_group()
    one.add_argument('--fast-only', action='store_true', help='time the fast tier only')
    one.add_argument('--whole-only', action='store_true', help='time the whole suite only')
    add_results_arg(p)
    args = p.parse_args(argv)
    rows, values, rc = [], {}, 0
    tiers = TIERS[:1] if args.fast_only else TIERS[1:] if args.whole_only else TIERS
    for name, extra in tiers:
        counts, wall, code = run_tier(extra, args.results_json)
        rc = rc or code
        shown = ' '.join(shlex.quote(a) for a in extra).replace("'", '"')
        rows.append([name, f'`.venv/bin/python -m pytest tests -q{" " + shown if shown else ""}`',
                     ', '.join(f'{n} {w}' for w, n in counts.items()), f'{wall / 60:.1f}'])
        values[name] = dict(counts=counts, seconds=round(wall, 1), returncode=code)
        print(f'{name}: {rows[-1][2]} in {wall / 60:.1f} min (exit {code})', flush=True)
    if args.results_json:
        write_results(args.results_json, {'tiers': table(['tier', 'command', 'tests', 'minutes'], rows)}, values)
        print(f'wrote {args.results_json}')
    return 1 if rc else 0


if __name__ == '__main__':
    sys.exit(main())
