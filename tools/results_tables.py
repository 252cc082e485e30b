"""Write (or check) the measured tables the README, the docs and the config READMEs quote.

Every measured table in a Markdown file stands between two comments that name its results file
(``tools/analysis/results_file.py``) and the table in it::

    <!-- results: docs/results/demo.json stages -->
    | stage | metric | ... |          <- written by this tool, never by hand
    ...
    *Source: `docs/results/demo.json`, 2026-12-04, commit 0123abcd4567, <machine>.*
    <!-- /results -->

    python tools/results_tables.py            # rewrite every block from its results file
    python tools/results_tables.py --check    # exit 1, naming file:line, where a block differs

``tests/test_docs.py`` runs the check, so a figure that differs from its results file fails CI.
"""
from __future__ import annotations

import argparse
import glob
import os.path as osp
import re
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), 'analysis'))
from results_file import load_results, render_provenance, render_table  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BEGIN = re.compile(r'^<!-- results: (\S+) (\S+) -->\s*$')
END = '<!-- /results -->'


def markdown_files(repo: str = REPO) -> list[str]:
    """README.md, every Markdown page under docs/ and every config README."""
    files = [osp.join(repo, 'README.md')]
    files += glob.glob(osp.join(repo, 'docs', '**', '*.md'), recursive=True)
    files += glob.glob(osp.join(repo, 'configs', '*', 'README.md'))
    return sorted(f for f in files if '/_build/' not in f)


def render_block(results_path: str, table_name: str, repo: str = REPO) -> list[str]:
    """The lines between the two comments: the table, a blank line, the source line.

    Raises:
        FileNotFoundError: the results file does not exist.
        KeyError: the file has no table of that name (the message lists those it has).
    """
    doc = load_results(osp.join(repo, results_path))
    if table_name not in doc['tables']:
        raise KeyError(f'{results_path} has no table {table_name!r}; it has {sorted(doc["tables"])}')
    return render_table(doc['tables'][table_name]).split('\n') + ['', render_provenance(doc, results_path)]


def process(path: str, write: bool, repo: str = REPO) -> list[str]:
    """Rewrite (``write``) or check one file's blocks; returns ``file:line: problem`` strings."""
    with open(path) as f:
        lines = f.read().split('\n')
    rel = osp.relpath(path, repo)
    out, problems, i = [], [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        m = BEGIN.match(line)
        if not m:
            i += 1
            continue
        try:
            end = lines.index(END, i + 1)
        except ValueError:
            problems.append(f'{rel}:{i + 1}: a results block without its closing {END}')
            i += 1
            continue
        try:
            want = render_block(m.group(1), m.group(2), repo)
        except (OSError, KeyError, ValueError) as e:
            problems.append(f'{rel}:{i + 1}: {e}')
            want = lines[i + 1:end]
        if lines[i + 1:end] != want:
            problems.append(f'{rel}:{i + 1}: the table differs from {m.group(1)} [{m.group(2)}]; '
                            f'run python tools/results_tables.py')
        out.extend(want)
        out.append(END)
        i = end + 1
    if write and out != lines:
        with open(path, 'w') as f:
            f.write('\n'.join(out))
    return problems


def _markdown_file(value: str) -> str:
    """argparse ``type`` of FILES: an existing file, else a usage error naming it."""
    if not osp.isfile(value):
        raise argparse.ArgumentTypeError(f'no such file: {value!r}')
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--check', action='store_true', help='only compare; exit 1 naming each block that differs')
    p.add_argument('files', nargs='*', type=_markdown_file,
                   help='Markdown files (default: README, docs/, config READMEs)')
    args = p.parse_args(argv)
    problems = []
    for f in args.files or markdown_files():
        problems += process(f, write=not args.check)
    if args.check and problems:
        print('\n'.join(problems), file=sys.stderr)
        return 1
    for pr in problems:
        if 'differs' not in pr:
            print(pr, file=sys.stderr)
    return 1 if any('differs' not in pr for pr in problems) else 0


if __name__ == '__main__':
    sys.exit(main())
