#!/usr/bin/env bash
# Create (or reuse) the isolated environment tlalign_mm runs in.
#
#   bash tools/setup_env.sh            # build or reuse the env, print how to activate it
#   TLALIGN_ENV=/path/venv bash tools/setup_env.sh
#
# Installs, pinned by requirements/constraints.txt: torch + torchvision (matched pair, the
# registry's default builds), mmengine, mmcv WITH compiled ops (prebuilt wheel if one matches,
# else built from the source archive and cached), mmdet, mmsegmentation, mmpretrain, timm, pycocotools,
# the test tools, the robustness tools (torchattacks, imagecorruptions), and this package in
# editable mode.
#
# Idempotent: a stamp holding the hash of every input is written when an environment is
# complete; a re-run with the same inputs only re-links this checkout (seconds).
#
# Variables:
#   PYTHON               interpreter to build the env from (default: python3), 3.10+
#   TLALIGN_ENV          where the venv lives (default: ~/.cache/tlalign_mm/env-<pyver>)
#   TLALIGN_WHEEL_CACHE  where built mmcv wheels are kept (default: ~/.cache/tlalign_mm/wheels)
#   MAX_JOBS             parallel compile jobs for mmcv (default: nproc)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
CACHE_ROOT=${TLALIGN_CACHE:-$HOME/.cache/tlalign_mm}
WHEEL_CACHE=${TLALIGN_WHEEL_CACHE:-$CACHE_ROOT/wheels}
CONSTRAINTS=$REPO/requirements/constraints.txt
STEP="checking the interpreter"
NSTEPS=7

say()  { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die()  { printf '\n[setup] FAILED while %s:\n  %s\n' "$STEP" "$*" >&2; trap - EXIT; exit 1; }
step() { STEP="$2"; say "step $1/$NSTEPS: $2"; }
trap 'rc=$?; [ $rc -ne 0 ] && printf "\n[setup] FAILED while %s (exit %s). See the output above.\n" "$STEP" "$rc" >&2' EXIT

pin() { sed -n "s/^$1==\(.*\)$/\1/p" "$CONSTRAINTS"; }

# --- 1. interpreter and compiler --------------------------------------------------------
step 1 "checking the interpreter and the compiler"
command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found. Install Python 3.10+ or set PYTHON=/path/to/python3."
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "Python $PYVER is too old: tlalign_mm needs 3.10+ (set PYTHON=/path/to/python3.10+)."
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "Python $PYVER lacks venv/ensurepip. On Debian/Ubuntu: apt-get install python$PYVER-venv"
"$PYTHON" -c 'import sysconfig, os, sys; h = sysconfig.get_paths()["include"]; sys.exit(0 if os.path.exists(os.path.join(h, "Python.h")) else 1)' \
  || die "Python headers (Python.h) are missing; mmcv's ops cannot compile. On Debian/Ubuntu: apt-get install python$PYVER-dev"
command -v g++ >/dev/null || command -v c++ >/dev/null \
  || die "no C++ compiler found; mmcv's ops must be compiled. On Debian/Ubuntu: apt-get install g++ (build-essential)."

ENV_DIR=${TLALIGN_ENV:-$CACHE_ROOT/env-py$PYVER}
VPY=$ENV_DIR/bin/python
STAMP=$ENV_DIR/.tlalign_stamp
# Everything that decides the environment's content goes into the stamp.
INPUTS_HASH=$( (cat "$CONSTRAINTS" "$REPO"/requirements/*.txt "$0"; "$PYTHON" -VV) | sha256sum | cut -c1-16)

check_env() {
  "$VPY" - <<'EOF'
import importlib.metadata as md
import warnings
with warnings.catch_warnings():  # imagecorruptions imports the deprecated pkg_resources
    warnings.simplefilter('ignore')
    import imagecorruptions  # noqa: F401  (before mmdet, whose import makes warnings show regardless)
import torch, torchvision, timm, mmengine, mmcv, mmdet.models, mmseg.models  # noqa: F401
from mmcv.ops import RoIAlign, nms  # noqa: F401  (compiled ops)
import pycocotools, pytest, torchattacks, xdist  # noqa: F401
import mmpretrain.models  # noqa: F401  (the --to mmpretrain export's target)
print('  torch', torch.__version__, '| torchvision', torchvision.__version__, '| mmcv', mmcv.__version__,
      '| mmdet', md.version('mmdet'), '| mmseg', md.version('mmsegmentation'), '| timm', timm.__version__,
      '| mmengine', mmengine.__version__)
EOF
}

link_checkout() {
  STEP="installing this checkout (editable)"
  "$VPY" -m pip install -q --no-deps --no-build-isolation -e "$REPO" \
    || die "pip install -e $REPO failed."
  "$VPY" -c 'import tlalign_mm' || die "'import tlalign_mm' fails inside $ENV_DIR."
}

finish() {
  ln -sfn "$ENV_DIR" "$REPO/.venv"
  say "ready: $ENV_DIR (linked as $REPO/.venv)"
  say "activate with:  source $REPO/.venv/bin/activate"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$INPUTS_HASH" ] && [ -x "$VPY" ]; then
  say "environment $ENV_DIR is up to date (inputs $INPUTS_HASH); re-linking this checkout"
  STEP="checking the cached environment"
  if check_env; then
    link_checkout
    finish
    exit 0
  fi
  say "the cached environment fails its import check; rebuilding it"
  rm -f "$STAMP"
fi

# --- 2. venv ----------------------------------------------------------------------------
step 2 "creating the virtual environment at $ENV_DIR"
if [ ! -x "$VPY" ]; then
  "$PYTHON" -m venv "$ENV_DIR" || die "python -m venv $ENV_DIR failed."
fi
"$VPY" -m pip install -q --upgrade pip || die "could not upgrade pip in $ENV_DIR (registry reachable?)."
"$VPY" -m pip install -q -c "$CONSTRAINTS" -r "$REPO/requirements/build.txt" \
  || die "could not install the build tools (setuptools<70, wheel, ninja)."

# --- 3. torch + torchvision, as a matched pair --------------------------------------------
TORCH=$(pin torch); TV=$(pin torchvision)
step 3 "installing torch==$TORCH + torchvision==$TV (the CUDA builds are several GB; first time takes minutes)"
have_torch=$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
have_tv=$("$VPY" -c 'import importlib.metadata as m; print(m.version("torchvision"))' 2>/dev/null || true)
if [ "${have_torch%%+*}" != "$TORCH" ] || [ "${have_tv%%+*}" != "$TV" ]; then
  if [ -n "$have_torch" ] && [ -n "${TLALIGN_ENV:-}" ] && [ -z "${TLALIGN_REPLACE_TORCH:-}" ]; then
    die "$ENV_DIR already holds torch $have_torch / torchvision ${have_tv:-none}, not the tested pair $TORCH / $TV.
  Remove them (pip uninstall torch torchvision) or re-run with TLALIGN_REPLACE_TORCH=1 to replace them."
  fi
  "$VPY" -m pip install --progress-bar off "torch==$TORCH" "torchvision==$TV" \
    || die "pip could not install torch==$TORCH torchvision==$TV."
fi
"$VPY" -c 'import torch, torchvision; torchvision.ops.nms' 2>/dev/null \
  || die "torch and torchvision do not import together (mismatched pair?). Remove both and re-run: $VPY -m pip uninstall -y torch torchvision"

# --- 4. pure-Python runtime -----------------------------------------------------------
step 4 "installing mmengine, timm, pycocotools, the test, docs and robustness tools"
"$VPY" -m pip install -q -c "$CONSTRAINTS" -r "$REPO/requirements/runtime.txt" \
  -r "$REPO/requirements/tests.txt" -r "$REPO/requirements/docs.txt" pycocotools \
  || die "pip could not install requirements/runtime.txt + tests.txt + docs.txt."
# Robustness tools (requirements/robustness.txt): torchattacks without its stale requests pin.
"$VPY" -m pip install -q -c "$CONSTRAINTS" "setuptools>=77,<81" imagecorruptions tqdm \
  || die "pip could not install imagecorruptions (requirements/robustness.txt)."
"$VPY" -m pip install -q --no-deps -c "$CONSTRAINTS" torchattacks \
  || die "pip could not install torchattacks (requirements/robustness.txt)."

# --- 5. mmcv with compiled ops ----------------------------------------------------------
MMCV=$(pin mmcv)
TAG=$("$VPY" -c 'import torch, sys; print("torch%s-cp%d%d-%s" % (torch.__version__.split("+")[0], *sys.version_info[:2], "cuda" if torch.cuda.is_available() or __import__("os").environ.get("FORCE_CUDA") == "1" else "cpu"))')
MMCV_DIR=$WHEEL_CACHE/mmcv-$MMCV-$TAG
step 5 "installing mmcv==$MMCV with compiled ops (cache: $MMCV_DIR)"
mmcv_ok() { "$VPY" -c 'import mmcv; from mmcv.ops import nms, RoIAlign' 2>/dev/null; }
have_mmcv=$("$VPY" -c 'import importlib.metadata as m; print(m.version("mmcv"))' 2>/dev/null || true)
if [ "$have_mmcv" = "$MMCV" ] && mmcv_ok; then
  say "  mmcv $MMCV with ops already installed"
else
  mkdir -p "$MMCV_DIR"
  whl=$(ls "$MMCV_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    say "  looking for a prebuilt mmcv==$MMCV wheel on the registry"
    if "$VPY" -m pip download -q --no-deps --only-binary=:all: -d "$MMCV_DIR" "mmcv==$MMCV" 2>/dev/null; then
      whl=$(ls "$MMCV_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)
    fi
  fi
  if [ -z "$whl" ]; then
    say "  none matches: building mmcv $MMCV from source (the longest step of a fresh set-up)"
    SRC=$(mktemp -d)
    # mmcv 2.1's setup.py imports pkg_resources (gone from setuptools >= 70), while torch
    # wants setuptools >= 77: pin the old one for the compile only, then restore.
    say "  setuptools<70 for the compile only (pip reports that torch wants >= 77: expected; restored after)"
    "$VPY" -m pip install -q "setuptools<70" || die "could not install setuptools<70 for the mmcv build."
    "$VPY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$SRC" "mmcv==$MMCV" \
      || die "could not download the mmcv==$MMCV source archive."
    tar -xzf "$SRC"/mmcv-"$MMCV".tar.gz -C "$SRC" || die "could not unpack $SRC/mmcv-$MMCV.tar.gz"
    # torch >= 2.10 headers need C++20; mmcv 2.1 hard-codes -std=c++17.
    if "$VPY" -c 'import torch, sys; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(0 if v >= (2, 10) else 1)'; then
      sed -i 's/-std=c++17/-std=c++20/g' "$SRC/mmcv-$MMCV/setup.py"
    fi
    # Print a heartbeat: the compile is long and otherwise silent.
    ( while sleep 60; do n=$(find "$SRC/mmcv-$MMCV/build" -name '*.o' 2>/dev/null | wc -l); say "  ... compiling mmcv ops: $n object files so far"; done ) &
    HB=$!
    ( cd "$SRC/mmcv-$MMCV" && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "$VPY" -m pip wheel -q --no-deps --no-build-isolation -w "$MMCV_DIR" . ) \
      || { kill $HB 2>/dev/null; "$VPY" -m pip install -q "setuptools>=77,<81"; die "compiling mmcv $MMCV failed (log above). Needs g++, Python headers, setuptools<70."; }
    kill $HB 2>/dev/null || true
    "$VPY" -m pip install -q "setuptools>=77,<81" || die "could not restore setuptools>=77,<81 after the mmcv build."
    rm -rf "$SRC"
    whl=$(ls "$MMCV_DIR"/mmcv-*.whl | head -n1)
    say "  built and cached $whl"
  else
    say "  using cached wheel $whl"
  fi
  "$VPY" -m pip install -q --no-deps --force-reinstall "$whl" || die "could not install $whl"
  "$VPY" -m pip install -q -c "$CONSTRAINTS" addict pyyaml yapf packaging pillow opencv-python \
    || die "could not install mmcv's runtime requirements."
  mmcv_ok || die "mmcv installed but 'from mmcv.ops import nms, RoIAlign' fails (ops not compiled?)."
fi

# --- 6. mmdet + mmseg -----------------------------------------------------------------------
step 6 "installing mmdet==$(pin mmdet), mmsegmentation==$(pin mmsegmentation) and mmpretrain==$(pin mmpretrain)"
"$VPY" -m pip install -q -c "$CONSTRAINTS" -r "$REPO/requirements/mminstall.txt" \
  || die "pip could not install requirements/mminstall.txt."
# mmseg imports these at `import mmseg.models` but does not declare them.
"$VPY" -m pip install -q ftfy regex || die "could not install ftfy/regex (needed by mmseg)."
# mmpretrain (requirements/mmpretrain.txt): what it imports, then itself without its declared dependencies,
# whose `modelindex` is, on PyPI, an empty package with no module.
"$VPY" -m pip install -q -c "$CONSTRAINTS" einops importlib-metadata \
  && "$VPY" -m pip install -q --no-deps -c "$CONSTRAINTS" mmpretrain \
  || die "pip could not install mmpretrain (requirements/mmpretrain.txt)."

# --- 7. this package + the final check ----------------------------------------------------
step 7 "installing tlalign_mm (editable) and checking every import"
link_checkout
STEP="the final import check"
check_env || die "the environment is incomplete: the import check above failed."
echo "$INPUTS_HASH" > "$STAMP"
trap - EXIT
finish
