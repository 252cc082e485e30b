"""The docs cannot go stale silently: README.md, CHANGELOG.md, docs/**/*.md and configs/*/README.md.

Each check reports ``file:line: what is wrong``:

* every repository path (``tlalign_mm/...``, ``tools/...``, ``configs/...``, ``docs/...``, ``tests/...``,
  ``requirements/...``), with brace patterns such as ``configs/{pretrain,upernet}/`` expanded and
  globs matched, exists; every relative Markdown link or image resolves;
* every backticked dotted name ``tlalign_mm.x.y`` imports, and every backticked ``Class.attr`` whose
  class is one of the package's resolves;
* every fenced ``tools/*.py`` / ``tools/*.sh`` command uses only long flags its parser accepts (a shell
  wrapper accepts its own flags and those of the Python tools it runs);
* fenced commands under a ``<!-- smoke-test -->`` comment run and print what the block's
  ``<!-- expect: TEXT -->`` comment says (slow);
* no working-note wording;
* every measured table equals its results file (``tools/results_tables.py --check``), and no measured
  figure (a number with a unit of time, a ratio or a percentage) stands outside such a table.
"""
from __future__ import annotations

import functools
import glob
import importlib
import importlib.util
import inspect
import json
import os
import os.path as osp
import pkgutil
import re
import shlex
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(REPO, 'tools'))
import results_tables  # noqa: E402  (tools/results_tables.py)


def doc_files() -> list[str]:
    return sorted(set(results_tables.markdown_files(REPO) + [osp.join(REPO, 'CHANGELOG.md')]))


class Line:
    """One line of a Markdown file with its fence state."""

    def __init__(self, path: str, no: int, text: str, fence: str | None, in_results: bool):
        self.path, self.no, self.text, self.fence, self.in_results = path, no, text, fence, in_results

    def where(self) -> str:
        return f'{osp.relpath(self.path, REPO)}:{self.no}'


@functools.cache
def read_lines(path: str) -> tuple[Line, ...]:
    out, fence, fence_mark, in_results = [], None, None, False
    with open(path) as f:
        for no, text in enumerate(f.read().split('\n'), 1):
            stripped = text.strip()
            m = re.match(r'^(`{3,}|~{3,})\s*\{?([\w-]*)\}?', stripped)
            if fence is None and m:
                fence, fence_mark = (m.group(2) or 'text'), m.group(1)
                out.append(Line(path, no, text, '<open>', in_results))
                continue
            if fence is not None and stripped.startswith(fence_mark) and stripped.strip('`~') == '':
                out.append(Line(path, no, text, '<close>', in_results))
                fence = None
                continue
            if results_tables.BEGIN.match(stripped):
                in_results = True
            elif stripped == results_tables.END:
                in_results = False
            out.append(Line(path, no, text, fence, in_results))
    return tuple(out)


def all_lines():
    for p in doc_files():
        yield from read_lines(p)


#: records of what was: the changelog names paths and modules that have since moved
HISTORY = ('CHANGELOG.md',)


def current_lines():
    """The lines that describe the tree as it is (all but :data:`HISTORY`)."""
    for p in doc_files():
        if osp.relpath(p, REPO) not in HISTORY:
            yield from read_lines(p)


#: the results file a running measurement is writing (``tools/test_tiers.py`` times this suite, so the
#: file it writes cannot exist while the suite runs): quotes of it, and only of it, are not checked then
IN_PROGRESS = os.environ.get('TLALIGN_RESULTS_IN_PROGRESS')


# --- paths ----------------------------------------------------------------------------------------
PATH_RE = re.compile(r'(?<![\w./~$-])((?:tlalign_mm|tools|configs|docs|tests|requirements|\.ci)/[\w./{},*-]*)')
SKIP_PATH = ('docs/_build',)


def expand_braces(s: str) -> list[str]:
    m = re.search(r'\{([^{}]*)\}', s)
    if not m:
        return [s]
    return [x for alt in m.group(1).split(',') for x in expand_braces(s[:m.start()] + alt + s[m.end():])]


def path_problems(line: Line) -> list[str]:
    problems = []
    for m in PATH_RE.finditer(line.text):
        raw = m.group(1).rstrip('.,:;')
        if raw.startswith(SKIP_PATH) or raw.endswith('/{') or raw.count('{') != raw.count('}'):
            continue
        for p in expand_braces(raw):
            if not p or p.endswith('/.'):
                continue
            full = osp.join(REPO, p)
            if IN_PROGRESS and p == IN_PROGRESS:
                continue
            ok = glob.glob(full) if any(c in p for c in '*?[') else osp.exists(full)
            if not ok:
                problems.append(f'{line.where()}: {p!r} does not exist (in {raw!r})')
    if line.fence is None:
        for m in re.finditer(r'!?\[[^\]]*\]\(([^)\s]+)\)', line.text):
            target = m.group(1).split('#')[0]
            if not target or re.match(r'^[a-z]+:', target):
                continue
            full = osp.normpath(osp.join(osp.dirname(line.path), target))
            if not osp.exists(full):
                problems.append(f'{line.where()}: the link {m.group(1)!r} leads nowhere '
                                f'({osp.relpath(full, REPO)} does not exist)')
    return problems


def test_every_repository_path_and_relative_link_exists():
    problems = [p for line in current_lines() for p in path_problems(line)]
    assert not problems, '\n'.join(problems)


def test_path_check_catches_a_dead_path_and_expands_braces(tmp_path):
    md = tmp_path / 'x.md'
    md.write_text('see `configs/{pretrain,nowhere}/README.md` and [a](missing.md)\n')
    problems = path_problems(read_lines(str(md))[0])
    assert any("'configs/nowhere/README.md' does not exist" in p for p in problems), problems
    assert not any('configs/pretrain/README.md' in p and 'does not exist' in p.split('(in')[0] for p in problems)
    assert any("'missing.md' leads nowhere" in p for p in problems), problems
    assert expand_braces('a/{b,c}/{d,e}.py') == ['a/b/d.py', 'a/b/e.py', 'a/c/d.py', 'a/c/e.py']


# --- dotted names ---------------------------------------------------------------------------------
@functools.cache
def package_classes() -> dict[str, list[type]]:
    """Every class defined in a tlalign_mm module, by name."""
    import tlalign_mm
    out: dict[str, list[type]] = {}
    for info in pkgutil.walk_packages(tlalign_mm.__path__, 'tlalign_mm.'):
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and getattr(obj, '__module__', '').startswith('tlalign_mm'):
                if obj not in out.setdefault(name, []):
                    out[name].append(obj)
    return out


def resolve_dotted(name: str) -> bool:
    """``tlalign_mm.x.y`` imports (the rule the docs build's cross-reference resolver uses, docs/conf.py)."""
    return docs_conf()._exists(name)


@functools.cache
def docs_conf():
    spec = importlib.util.spec_from_file_location('tlalign_docs_conf', osp.join(REPO, 'docs', 'conf.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BACKTICK_RE = re.compile(r'`([^`\s]+)`')


def name_problems(line: Line) -> list[str]:
    if line.fence is not None:
        return []
    problems = []
    for m in BACKTICK_RE.finditer(line.text):
        tok = re.sub(r'\(.*\)$', '', m.group(1)).rstrip('.,:')
        if re.fullmatch(r'tlalign_mm(\.\w+)+', tok):
            if not resolve_dotted(tok):
                problems.append(f'{line.where()}: `{tok}` does not resolve')
        elif re.fullmatch(r'[A-Z]\w+\.\w+', tok):
            cls, attr = tok.split('.')
            classes = package_classes().get(cls)
            if classes is None:
                if cls.startswith('TLA'):
                    problems.append(f'{line.where()}: `{tok}`: no class {cls} in tlalign_mm')
                continue
            if not any(hasattr(c, attr) for c in classes):
                problems.append(f'{line.where()}: `{tok}`: {cls} has no attribute {attr!r}')
    return problems


def test_every_dotted_name_resolves():
    problems = [p for line in current_lines() for p in name_problems(line)]
    assert not problems, '\n'.join(problems)


def test_name_check_catches_a_moved_name(tmp_path):
    md = tmp_path / 'x.md'
    md.write_text('`tlalign_mm.align.no_such_thing` and `TLAClassifier.no_such_method` and '
                  '`tlalign_mm.align` and `torch.autocast`\n')
    problems = name_problems(read_lines(str(md))[0])
    assert len(problems) == 2, problems
    assert 'tlalign_mm.align.no_such_thing' in problems[0] and 'no_such_method' in problems[1]


# --- tool flags -----------------------------------------------------------------------------------
#: run in one process: each Python tool's ``--help`` (as ``python tools/x.py --help`` runs it), as JSON
HELP_RUNNER = r"""
import contextlib, io, json, os, runpy, sys
out, path0 = {}, list(sys.path)
for path in sys.argv[1:]:
    buf, sys.argv = io.StringIO(), [path, '--help']
    sys.path[:] = [os.path.dirname(os.path.abspath(path))] + path0     # as `python path` puts its folder first
    # and as a fresh process: the tools' own helper modules (_common.py puts tools/ on sys.path when it is
    # imported) are imported again, not taken from the tool before
    tools = os.path.abspath('tools') + os.sep
    for name in [n for n, m in sys.modules.items() if (getattr(m, '__file__', None) or '').startswith(tools)]:
        del sys.modules[name]
    code = 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        try:
            runpy.run_path(path, run_name='__main__')
        except SystemExit as e:
            code = e.code or 0
        except BaseException as e:  # a tool that fails to start
            code = repr(e)
    out[path] = [code, buf.getvalue()]
print(json.dumps(out))
"""


@functools.cache
def python_tool_help() -> dict[str, tuple]:
    """``(exit code, --help text)`` of every Python tool under ``tools/`` that runs as a script, from one
    interpreter (the tools' imports are paid once); the helper modules they import are not run."""
    paths = sorted(osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'tools', '**', '*.py'), recursive=True)
                   if "if __name__ == '__main__'" in open(p).read())
    out = subprocess.run([sys.executable, '-c', HELP_RUNNER, *paths], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get(
                             'PYTHONPATH', '')])))
    assert out.returncode == 0, out.stderr[-3000:]
    return {k: tuple(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


@functools.cache
def accepted_flags(tool: str) -> frozenset[str]:
    """The long flags ``tool`` (``tools/...``) accepts: its ``--help`` for Python, its own text and the
    Python tools it runs for shell scripts."""
    path = osp.join(REPO, tool)
    if tool.endswith('.py'):
        code, text = python_tool_help().get(tool, (0, ''))      # a helper module (launch.py): no flags of its own
        assert code == 0, f'{tool} --help failed: {code}'
        return frozenset(re.findall(r'--[\w-]+', text))
    text = open(path).read()
    flags = set(re.findall(r'(?<![\w-])--[\w-]+', text))
    for sub in set(re.findall(r'tools/[\w/]+\.py', text)) - {tool}:
        if osp.exists(osp.join(REPO, sub)):
            flags |= accepted_flags(sub)
    return frozenset(flags)


def fenced_commands(lines) -> list[tuple[Line, str]]:
    """Shell commands in fenced blocks (backslash continuations joined), with their first line."""
    cmds, buf, first = [], '', None
    for line in lines:
        if line.fence in (None, '<open>', '<close>') or line.fence not in ('bash', 'sh', 'shell', 'console', 'text'):
            buf, first = '', None
            continue
        text = line.text.strip()
        if text.startswith('$ '):
            text = text[2:]
        first = first or line
        if text.endswith('\\'):
            buf += text[:-1] + ' '
            continue
        cmds.append((first, buf + text))
        buf, first = '', None
    return cmds


def flag_problems(line: Line, cmd: str) -> list[str]:
    try:
        tokens = shlex.split(cmd, comments=True)
    except ValueError:
        return []
    problems, tool = [], None
    for tok in tokens:
        if tok in ('&&', '||', ';', '|') or tok.endswith(';'):
            tool = None
            continue
        m = re.fullmatch(r'(?:\./)?(tools/[\w/]+\.(?:py|sh))', tok)
        if m and osp.exists(osp.join(REPO, m.group(1))):
            tool = m.group(1)
            continue
        if tool and tok.startswith('--') and len(tok) > 2:
            flag = tok.split('=')[0]
            if flag not in accepted_flags(tool):
                problems.append(f'{line.where()}: {tool} does not accept {flag}')
    return problems


def test_every_fenced_tool_command_uses_real_flags():
    problems = [p for path in doc_files() for line, cmd in fenced_commands(read_lines(path))
                for p in flag_problems(line, cmd)]
    assert not problems, '\n'.join(problems)


def test_flag_check_catches_a_wrong_flag(tmp_path):
    md = tmp_path / 'x.md'
    md.write_text('```bash\npython tools/train.py cfg.py --resume \\\n  --no-such-flag 3  # comment --ignored\n'
                  'bash tools/dist_train.sh cfg.py 8 --amp\n```\n')
    cmds = fenced_commands(read_lines(str(md)))
    assert [c for _, c in cmds][0].startswith('python tools/train.py cfg.py --resume')
    problems = [p for line, cmd in cmds for p in flag_problems(line, cmd)]
    assert len(problems) == 1 and problems[0].endswith(':2: tools/train.py does not accept --no-such-flag'), problems


# --- smoke tests ------------------------------------------------------------------------------------
def smoke_blocks() -> list[tuple[str, int, str, str]]:
    """(file, line, command, expected text) for each fenced block under ``<!-- smoke-test -->``."""
    out = []
    for path in doc_files():
        lines = read_lines(path)
        for i, line in enumerate(lines):
            if line.text.strip() != '<!-- smoke-test -->':
                continue
            expect = None
            j = i + 1
            while lines[j].fence != '<open>':
                m = re.match(r'<!-- expect: (.*) -->', lines[j].text.strip())
                expect = m.group(1) if m else expect
                j += 1
            body = []
            j += 1
            while lines[j].fence != '<close>':
                body.append(lines[j].text)
                j += 1
            out.append((osp.relpath(path, REPO), line.no, '\n'.join(body), expect))
    return out


def test_there_are_smoke_tests():
    assert smoke_blocks(), 'docs/get_started.md lost its <!-- smoke-test --> verify block'


@pytest.mark.slow
@pytest.mark.parametrize('where,no,cmd,expect', smoke_blocks(), ids=lambda v: str(v)[:40])
def test_smoke_test_commands_run(where, no, cmd, expect):
    env = dict(os.environ, PATH=osp.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
    out = subprocess.run(['bash', '-euo', 'pipefail', '-c', cmd], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, f'{where}:{no}: the smoke test failed (rc {out.returncode}):\n{out.stderr[-3000:]}'
    assert expect is None or expect in out.stdout, f'{where}:{no}: expected {expect!r} in:\n{out.stdout[-3000:]}'


# --- wording and figures ------------------------------------------------------------------------------
BANNED = ('measured here', 'this session', 'for lack of time', 'issue #', 'a test must show', "'s sketch",
          'the sketch', 'todo', 'must compute', 'the project should', 'not rerun', "this machine's", 'fixme')


def wording_problems(line: Line) -> list[str]:
    low = line.text.lower()
    return [f'{line.where()}: working-note wording {w!r}: {line.text.strip()[:100]}' for w in BANNED if w in low]


def test_no_working_note_wording():
    problems = [p for line in all_lines() for p in wording_problems(line)]
    assert not problems, '\n'.join(problems)


# A measured figure: a decimal with a unit, a ratio or a percentage (1.18x, 0.507 s, 48.1 mIoU, 66.6 %), or
# a whole number of seconds, minutes or hours.  Not figures: schedule names (3x), 95% intervals.
UNIT = r'(?:%|x\b|×|ms\b|s\b|sec\b|seconds?\b|min\b|minutes?\b|hours?\b|h\b|GiB|MiB|GB|MB|mIoU\b|AP\b|top-1\b)'
FIGURE_RE = re.compile(r'(?<![\w.`/-])(?:\d+\.\d+\s?' + UNIT + r'|\d+\s?(?:ms|s|sec|seconds?|min|minutes?|hours?)\b'
                       r'|\d+\s?%(?!\s*(?:interval|confidence|CI)))')


def figure_problems(line: Line) -> list[str]:
    """A measured figure typed by hand: outside code fences, inline code and results blocks."""
    if line.fence is not None or line.in_results or line.text.lstrip().startswith('<!--'):
        return []
    text = re.sub(r'`[^`]*`', '', line.text)
    text = re.sub(r'\]\([^)]*\)', ']', text)
    return [f'{line.where()}: {m.group(0)!r} is a figure typed by hand; quote it from a results file '
            f'(<!-- results: docs/results/FILE.json TABLE -->, tools/results_tables.py)'
            for m in FIGURE_RE.finditer(text)]


def test_every_figure_comes_from_a_results_file():
    problems = [p for line in all_lines() for p in figure_problems(line)]
    problems += [p for f in results_tables.markdown_files(REPO) for p in results_tables.process(f, write=False)
                 if not (IN_PROGRESS and IN_PROGRESS in p)]
    assert not problems, '\n'.join(problems)


def test_figure_and_wording_checks_catch_hand_typed_notes(tmp_path):
    md = tmp_path / 'x.md'
    md.write_text('TL-Align is 1.18x slower and gains 0.8% top-1 (measured here).\n`1.5x` in code\n'
                  '```bash\nsleep 5s\n```\n')
    lines = read_lines(str(md))
    assert len(figure_problems(lines[0])) == 2
    assert wording_problems(lines[0]) and not figure_problems(lines[1]) and not figure_problems(lines[3])


def test_results_blocks_must_equal_their_file(tmp_path):
    (tmp_path / 'docs' / 'results').mkdir(parents=True)
    sys.path.insert(0, osp.join(REPO, 'tools', 'analysis'))
    from results_file import table, write_results
    write_results(str(tmp_path / 'docs/results/r.json'), {'t': table(['a', 'b'], [['1', '2']])}, argv=['x'],
                  tool='tools/x.py')
    md = tmp_path / 'p.md'
    md.write_text('<!-- results: docs/results/r.json t -->\n| a | b |\n|---|---|\n| 1 | 3 |\n<!-- /results -->\n')
    problems = results_tables.process(str(md), write=False, repo=str(tmp_path))
    assert len(problems) == 1 and 'differs from docs/results/r.json' in problems[0], problems
    results_tables.process(str(md), write=True, repo=str(tmp_path))
    assert results_tables.process(str(md), write=False, repo=str(tmp_path)) == []
    assert '| 1 | 2 |' in md.read_text()


def test_a_quoted_run_names_the_cpu_kernels_it_ran_on():
    """Two CPUs of one name (both "AMD EPYC") can train the demo to other last digits: the machine record
    names the vector units that pick the float kernels, as torch's own dispatch sees them
    (``torch.backends.cpu.get_cpu_capability``), and the line under a quoted table shows them."""
    import torch
    sys.path.insert(0, osp.join(REPO, 'tools', 'analysis'))
    from results_file import provenance, render_provenance
    if os.environ.get('ATEN_CPU_CAPABILITY') or not osp.exists('/proc/cpuinfo'):
        pytest.skip('torch dispatch capability overridden, or no /proc/cpuinfo')
    isa = provenance(argv=[], tool='tools/x.py')['machine']['cpu_isa']
    want = {'AVX512': 'AVX-512', 'AVX2': 'AVX2', 'DEFAULT': 'no AVX2'}.get(torch.backends.cpu.get_cpu_capability())
    if want is None or isa is None:
        pytest.skip(f'not an x86 CPU (torch: {torch.backends.cpu.get_cpu_capability()}, flags: {isa})')
    assert isa.split(' + ')[0] == want
    doc = {'date': '2026-12-05T10:00:00Z', 'commit': '0123456789abcdef',
           'machine': {'cpu': 'AMD EPYC', 'cpu_isa': 'AVX2', 'cores': 2, 'gpu': None}}
    assert render_provenance(doc, 'docs/results/x.json') == \
        '*Source: `docs/results/x.json`, 2026-12-05, commit 0123456789ab, AMD EPYC (AVX2), 2 cores.*'
    del doc['machine']['cpu_isa']      # a file written before the field: as it always rendered
    assert render_provenance(doc, 'docs/results/x.json') == \
        '*Source: `docs/results/x.json`, 2026-12-05, commit 0123456789ab, AMD EPYC, 2 cores.*'
