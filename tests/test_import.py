"""``import tlalign_mm`` only fills registries: no process-wide torch or mmengine setting, no environment
variable, no output.

A fresh interpreter first imports every third-party module ``import tlalign_mm`` pulls in (their own
import-time effects, e.g. opencv's Qt variables, are theirs, not ours), then records torch's weights_only
allow-list (``torch.serialization.get_safe_globals()``), ``os.environ``, ``torch.load`` and mmengine's
checkpoint schemes, imports ``tlalign_mm`` (or ``tlalign_mm.models``, what the mm configs import), and compares;
anything written to stdout / stderr during that import fails the test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DEPENDENCIES = textwrap.dedent('''
    import json, sys
    import tlalign_mm
    print(json.dumps([m for m in sys.modules if m.split('.')[0] not in ('tlalign_mm', '__main__')]))
''')

_CHECK = textwrap.dedent('''
    import contextlib, importlib, json, os, sys
    for name in json.loads(sys.argv[2]):
        with contextlib.suppress(Exception):   # a private module that only its parent may import: the parent did
            importlib.import_module(name)
    import torch
    from mmengine.runner.checkpoint import CheckpointLoader
    before = (set(torch.serialization.get_safe_globals()), dict(os.environ), torch.load,
              dict(CheckpointLoader._schemes))
    print('<<BEGIN>>', flush=True)
    print('<<BEGIN>>', file=sys.stderr, flush=True)
    importlib.import_module(sys.argv[1])
    print('<<END>>', flush=True)
    print('<<END>>', file=sys.stderr, flush=True)
    safe, env = set(torch.serialization.get_safe_globals()), dict(os.environ)
    print(json.dumps(dict(
        safe_globals_added=sorted(map(repr, safe - before[0])), safe_globals_removed=len(before[0] - safe),
        env_changed=sorted(k for k in set(env) | set(before[1]) if env.get(k) != before[1].get(k)),
        torch_load_replaced=torch.load is not before[2],
        schemes_changed=sorted(k for k in set(CheckpointLoader._schemes) | set(before[3])
                               if CheckpointLoader._schemes.get(k) is not before[3].get(k)),
        tlalign_imported='tlalign_mm.checkpoint' in sys.modules)))
''')


def _run(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-c', *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='module')
def dependencies() -> str:
    return _run(_DEPENDENCIES).stdout.strip().splitlines()[-1]


def _between_markers(text: str) -> str:
    return text.split('<<BEGIN>>\n', 1)[1].split('<<END>>', 1)[0]


@pytest.mark.parametrize('module', ['tlalign_mm', 'tlalign_mm.models'])
def test_import_has_no_side_effects(dependencies, module):
    proc = _run(_CHECK, module, dependencies)
    assert _between_markers(proc.stdout) == '', proc.stdout
    assert _between_markers(proc.stderr) == '', proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == dict(safe_globals_added=[], safe_globals_removed=0, env_changed=[], torch_load_replaced=False,
                          schemes_changed=[], tlalign_imported=True), report


def test_the_check_bites(dependencies):
    """The same script sees a process-wide allow-list entry, an environment variable and a print."""
    code = ("import os, sys, torch; from mmengine.logging import HistoryBuffer; "
            "torch.serialization.add_safe_globals([HistoryBuffer]); os.environ['TLA_X'] = '1'; print('hello')")
    proc = _run(_CHECK.replace('importlib.import_module(sys.argv[1])', code), 'tlalign_mm', dependencies)
    assert _between_markers(proc.stdout) == 'hello\n'
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['env_changed'] == ['TLA_X'] and 'HistoryBuffer' in report['safe_globals_added'][0]


def test_import_registers_every_type_the_configs_name_and_nothing_private():
    """In a fresh process, ``import tlalign_mm`` (what the configs' ``custom_imports`` does) registers under
    scope ``tlalign_mm`` every loop / hook / model / dataset / transform / metric type a config names, and
    only public classes (a decorator left above a helper would register the helper instead of the class)."""
    code = '''
import glob, json, re
import tlalign_mm
from tlalign_mm import registry
regs = [getattr(registry, n) for n in registry.__all__ if n != 'FUNCTIONS']
names = {n: type(c).__name__ for r in regs for n, c in r.module_dict.items()}
private = sorted(n for n in names if n.startswith('_') or names[n] == 'function')
ours = set()   # the classes defined in the package's source
for path in glob.glob('tlalign_mm/**/*.py', recursive=True):
    ours |= set(re.findall(r'^class (\\w+)', open(path).read(), re.M))
wanted = set()  # the types the configs name (scoped or not) that are ours
for path in glob.glob('configs/**/*.py', recursive=True):
    wanted |= set(re.findall(r"type=['\\"](?:tlalign_mm\\.)?(\\w+)['\\"]", open(path).read())) & ours
print(json.dumps(dict(private=private, missing=sorted(wanted - set(names)), n=len(wanted))))
'''
    report = json.loads(_run(code).stdout.strip().splitlines()[-1])
    assert report['private'] == [] and report['missing'] == [] and report['n'] >= 8, report
