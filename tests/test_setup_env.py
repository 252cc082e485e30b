"""tools/setup_env.sh stops with a message that says what to install or remove."""
import os
import subprocess
import sys
import venv

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'tools', 'setup_env.sh')


BASH = subprocess.run(['bash', '-c', 'command -v bash'], capture_output=True, text=True).stdout.strip()


def _run(env_extra, timeout=600):
    env = dict(os.environ, **env_extra)
    return subprocess.run([BASH, SCRIPT], capture_output=True, text=True, env=env, timeout=timeout)


def test_missing_interpreter_is_named():
    r = _run({'PYTHON': '/nonexistent/python3'})
    assert r.returncode != 0
    assert "'/nonexistent/python3' not found" in r.stderr and 'Python 3.10+' in r.stderr
    assert r.stderr.count('FAILED') == 1


def test_missing_compiler_is_named(tmp_path):
    # a PATH with the interpreter and coreutils but no g++ / c++
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    for tool in ('bash', 'sed', 'sha256sum', 'cut', 'cat', 'date', 'dirname', 'mkdir', 'ls', 'head', 'rm'):
        src = subprocess.run(['bash', '-c', f'command -v {tool}'], capture_output=True, text=True).stdout.strip()
        if src:
            os.symlink(src, bindir / tool)
    os.symlink(sys.executable, bindir / 'python3')
    r = _run({'PATH': str(bindir), 'PYTHON': str(bindir / 'python3'), 'TLALIGN_ENV': str(tmp_path / 'env')})
    assert r.returncode != 0
    assert 'no C++ compiler found' in r.stderr and 'g++' in r.stderr


@pytest.mark.slow
def test_mismatched_torch_in_an_existing_env_is_named(tmp_path):
    env_dir = tmp_path / 'env'
    venv.create(env_dir, with_pip=True)
    site = subprocess.run([str(env_dir / 'bin' / 'python'), '-c', 'import site; print(site.getsitepackages()[0])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    dist = os.path.join(site, 'torch-2.0.0.dist-info')
    os.makedirs(dist)
    with open(os.path.join(dist, 'METADATA'), 'w') as f:
        f.write('Metadata-Version: 2.1\nName: torch\nVersion: 2.0.0\n')
    open(os.path.join(dist, 'RECORD'), 'w').close()
    r = _run({'TLALIGN_ENV': str(env_dir)})
    assert r.returncode != 0
    assert 'already holds torch 2.0.0' in r.stderr and 'pip uninstall torch torchvision' in r.stderr
