#!/usr/bin/env bash
# One-command set-up of a tested cbam_det stack in a virtual environment.
#
#   bash tools/setup_env.sh                  # or: make setup            (STACK=onedl)
#   STACK=upstream bash tools/setup_env.sh   # or: make setup STACK=upstream
#
# Stacks (pins in requirements/$STACK.txt; mmcv is built here from source with ops):
#   onedl     torch 2.13.0, onedl-mmengine 0.10.12, onedl-mmcv 2.3.6, onedl-mmdetection 3.5.1 (default)
#   upstream  torch 2.5.1, mmengine 0.10.7, mmcv 2.1.0, mmdet 3.3.0
#
# Environment variables:
#   STACK                 onedl | upstream                               (default: onedl)
#   VENV                  virtual environment to create/use              (default: <repo>/.venv/$STACK)
#   PYTHON                interpreter to create it with                  (default: python3.11, else python3)
#   CBAM_DET_CACHE        cache of built mmcv wheels and cbam_det kernels (default: ~/.cache/cbam_det)
#   FORCE_CUDA            1: build mmcv's CUDA ops, 0: CPU ops only      (default: auto-detect)
#   TORCH_CUDA_ARCH_LIST  CUDA architectures of a FORCE_CUDA=1 build
#                         (default: 8.0;9.0, plus 10.0;12.0 with CUDA >= 12.8)
#
# Idempotent: a second run with an unchanged stack only verifies the imports.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${STACK:-onedl}"
VENV="${VENV:-$REPO/.venv/$STACK}"
CACHE="${CBAM_DET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cbam_det}"
export CBAM_DET_CACHE="$CACHE"

die() { echo "setup_env: ERROR: $*" >&2; exit 1; }
say() { echo "setup_env: $*"; }

case "$STACK" in
    onedl)    MMCV_PKG=onedl-mmcv; MMCV_VERSION=2.3.6; PY_OK="3.10 3.11 3.12" ;;
    upstream) MMCV_PKG=mmcv;       MMCV_VERSION=2.1.0; PY_OK="3.9 3.10 3.11 3.12" ;;
    *) die "STACK=$STACK is not a known stack; use STACK=onedl or STACK=upstream" ;;
esac
REQ="$REPO/requirements/$STACK.txt"

# ---------------------------------------------------------------- interpreter
if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11
    elif command -v python3 >/dev/null 2>&1; then PYTHON=python3
    else die "no python3 found on PATH; install Python 3.11 (tested) or set PYTHON=/path/to/python"; fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable on PATH"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ " $PY_OK " == *" $PYVER "* ]] || \
    die "Python $PYVER is not supported by STACK=$STACK (allowed: ${PY_OK// /, }; tested: 3.11); set PYTHON="
"$PYTHON" -c 'import venv' 2>/dev/null || die "the 'venv' module is missing for $PYTHON (Debian: apt-get install python3-venv)"

# ---------------------------------------------------------------- compilers
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || \
    die "no C++ compiler (g++) found: mmcv's ops are compiled from source (Debian: apt-get install build-essential)"
CXX_ID="$( (g++ -dumpfullversion 2>/dev/null || c++ -dumpversion) | head -1)"
"$PYTHON" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
    || die "Python.h not found for $PYTHON: install the Python development headers (Debian: apt-get install python3-dev)"

# ---------------------------------------------------------------- venv
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating virtual environment $VENV (Python $PYVER, STACK=$STACK)"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# cbam_det's fused CPU kernels: compiled once per source/CPU/torch into $CBAM_DET_CACHE/ext
# (see docs or `python -m cbam_det.ops`). Without them everything still runs, on the PyTorch
# path, so a failure here is a warning.
build_kernels() {
    "$PY" -m cbam_det.ops 2>&1 | grep -v -e Warning -e 'from torch' -e CUDA_HOME | sed 's/^/setup_env: /' \
        || true
    "$PY" -c 'import sys; from cbam_det.ops import gate_ext; sys.exit(gate_ext() is None)' 2>/dev/null \
        || say "WARNING: the fused CPU kernels are unavailable; attention runs on the PyTorch path"
}

STAMP="$VENV/.cbam_det_stack"
WANT="$(cat "$REQ" "$REPO/requirements/build.txt" "$REPO/requirements/tests.txt" "$REPO/tools/setup_env.sh" \
        | sha256sum | cut -c1-16)-$STACK"
# the fast path only without an explicit FORCE_CUDA / TORCH_CUDA_ARCH_LIST: those always go through the
# full set-up, which swaps in the requested mmcv build (CPU or CUDA) where the installed one differs
if [[ -z "${FORCE_CUDA:-}${TORCH_CUDA_ARCH_LIST:-}" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && \
   "$PY" -c 'import torch, mmcv, mmdet, mmengine, pycocotools, pytest; from mmcv.ops import nms' 2>/dev/null; then
    "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$REPO" >/dev/null
    build_kernels
    say "STACK=$STACK already installed and unchanged ($VENV); nothing to do"
    exit 0
fi
if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" != *"-$STACK" ]]; then
    die "$VENV holds another stack ($(cat "$STAMP" | cut -d- -f2)); the two conflict in one environment: use another VENV"
fi

say "installing STACK=$STACK, started $(date +%H:%M:%S) (torch is large on a cold cache)"
install_start=$(date +%s)
"${PIP[@]}" install -q --upgrade "pip>=23,<25"
"${PIP[@]}" install -q -r "$REPO/requirements/build.txt" -r "$REQ" -r "$REPO/requirements/tests.txt"
say "installed the pinned packages in $(( $(date +%s) - install_start )) s"

# ---------------------------------------------------------------- mmcv (from source, with ops)
TORCH_TAG="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
TORCH_CUDA="$("$PY" -c 'import torch; print(torch.version.cuda or "")')"
if [[ -z "${FORCE_CUDA:-}" ]]; then
    FORCE_CUDA=0
    if command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        NVCC_VER="$(nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
        if [[ -n "$TORCH_CUDA" && "${NVCC_VER%%.*}" == "${TORCH_CUDA%%.*}" ]]; then
            FORCE_CUDA=1
        else
            say "WARNING: GPU found but nvcc $NVCC_VER does not match torch's CUDA $TORCH_CUDA: building CPU ops only"
            say "         (install a CUDA $TORCH_CUDA toolkit, put its nvcc first on PATH and rerun)"
        fi
    elif command -v nvcc >/dev/null 2>&1; then
        say "nvcc found but no GPU visible (nvidia-smi): building CPU ops only (FORCE_CUDA=1 to override)"
    fi
fi
case "$FORCE_CUDA" in 0|1) ;; *) die "FORCE_CUDA=$FORCE_CUDA: use 1 (CUDA ops) or 0 (CPU ops only)" ;; esac
if [[ "$FORCE_CUDA" == "1" ]]; then
    command -v nvcc >/dev/null 2>&1 || die "FORCE_CUDA=1 but nvcc is not on PATH"
    [[ -n "$TORCH_CUDA" ]] || die "FORCE_CUDA=1 but torch $TORCH_TAG in $VENV is a CPU-only build"
    NVCC_VER="$(nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
    [[ "${NVCC_VER%%.*}" == "${TORCH_CUDA%%.*}" ]] || \
        die "FORCE_CUDA=1 but nvcc is CUDA $NVCC_VER and torch is built with CUDA $TORCH_CUDA: put a CUDA ${TORCH_CUDA%%.*}.x nvcc first on PATH"
    if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
        # A100/A30 (8.0), H100/H200 (9.0); from CUDA 12.8 on also B200 (10.0) and RTX 50xx / RTX PRO (12.0)
        TORCH_CUDA_ARCH_LIST="8.0;9.0"
        if "$PY" -c "import sys; sys.exit(0 if tuple(map(int, '$NVCC_VER'.split('.'))) >= (12, 8) else 1)"; then
            TORCH_CUDA_ARCH_LIST="8.0;9.0;10.0;12.0"
        fi
    fi
    export TORCH_CUDA_ARCH_LIST
    # torch takes CUDA_HOME from `which nvcc` (../..), which is wrong for a wrapper script such as
    # /usr/local/bin/nvcc -> exec /usr/local/cuda-13.0/bin/nvcc: ask nvcc where its toolkit is
    if [[ -z "${CUDA_HOME:-}${CUDA_PATH:-}" ]]; then
        CUDA_HOME="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=\(.*\)\/bin\/\.\.$/\1/p' | head -n1)"
        [[ -n "$CUDA_HOME" && -f "$CUDA_HOME/include/cuda_runtime_api.h" ]] || \
            die "FORCE_CUDA=1: cannot find the CUDA toolkit of $(command -v nvcc); set CUDA_HOME"
        export CUDA_HOME
        say "CUDA toolkit: CUDA_HOME=$CUDA_HOME (from nvcc)"
    fi
    # torch's CUDA headers include the CUDA libraries' (cusparse.h, cublas_v2.h, ...), which a minimal
    # toolkit (nvcc and the runtime) lacks; PyPI's torch brings them in its nvidia-* wheels
    NV_INC="$("$PY" -c 'import glob, os, nvidia; print(":".join(sorted({d for r in nvidia.__path__ for d in glob.glob(os.path.join(r, "*", "include"))})))' 2>/dev/null || true)"
    if [[ -n "$NV_INC" ]]; then  # searched after the toolkit's own include directory
        export CPLUS_INCLUDE_PATH="${CPLUS_INCLUDE_PATH:+$CPLUS_INCLUDE_PATH:}$NV_INC"
        export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }-isystem ${NV_INC//:/ -isystem }"
        say "CUDA library headers from torch's nvidia wheels: $NV_INC"
    fi
    say "building mmcv's CUDA ops for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST (nvcc $NVCC_VER)"
    OPS_TAG="cu${TORCH_CUDA//./}-sm${TORCH_CUDA_ARCH_LIST//[;. +]/_}"
else
    OPS_TAG="cpu"
fi
KEY="${MMCV_PKG}-${MMCV_VERSION}_py${PYVER}_torch${TORCH_TAG}_${OPS_TAG}_gcc${CXX_ID}"

# A wheel's compiled ops hold CUDA device code (fat binaries) exactly when FORCE_CUDA=1 built them:
# refuse a wheel, or an installed mmcv, that does not match (a CPU build in a CUDA set-up, or the reverse).
check_ops() {
    "$PY" - "$1" "$FORCE_CUDA" <<'PYEOF'  # returns non-zero on a mismatch
import glob, os, sys, zipfile
path, cuda = sys.argv[1], sys.argv[2] == '1'
if path.endswith('.whl'):
    with zipfile.ZipFile(path) as z:
        ext = [n for n in z.namelist() if n.startswith('mmcv/_ext') and n.endswith('.so')]
        data = z.read(ext[0]) if ext else b''
else:  # an installed mmcv package directory
    ext = glob.glob(os.path.join(path, '_ext*.so'))
    data = open(ext[0], 'rb').read() if ext else b''
fatbin = b'.nv_fatbin' in data  # the ELF section of CUDA device code
print(f'setup_env: {path.rsplit("/", 1)[-1]}: compiled ops {"with" if fatbin else "without"} CUDA device code')
if not ext or fatbin != cuda:
    sys.exit(f'setup_env: ERROR: expected {"CUDA" if cuda else "CPU-only"} ops in {path}')
PYEOF
}
WHEEL_DIR="$CACHE/wheels/$KEY"
WHEEL="$(ls "$WHEEL_DIR"/*.whl 2>/dev/null | head -1 || true)"
if [[ -z "$WHEEL" ]]; then
    # no time estimate: it varies several-fold between machines (docs/stacks.md has measured ones)
    say "building $MMCV_PKG $MMCV_VERSION with ops ($OPS_TAG) from source on $(nproc) cores, started $(date +%H:%M:%S); the time it took follows"
    rm -rf "$WHEEL_DIR.tmp" && mkdir -p "$WHEEL_DIR.tmp"
    # --no-cache-dir: pip's own wheel cache is keyed by package and version only, so it would hand a
    # CPU build to a CUDA set-up (or the reverse); our cache above is keyed by CUDA and arch list
    build_start=$(date +%s)
    MMCV_WITH_OPS=1 FORCE_CUDA="$FORCE_CUDA" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "${PIP[@]}" wheel -q --no-cache-dir --no-build-isolation --no-deps --no-binary "$MMCV_PKG" \
        -w "$WHEEL_DIR.tmp" "$MMCV_PKG==$MMCV_VERSION"
    check_ops "$(ls "$WHEEL_DIR.tmp"/*.whl | head -1)" || die "the mmcv build does not match FORCE_CUDA=$FORCE_CUDA"
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
    WHEEL="$(ls "$WHEEL_DIR"/*.whl | head -1)"
    say "cached $WHEEL (built in $(( $(date +%s) - build_start )) s, $(du -m "$WHEEL" | cut -f1) MB)"
else
    say "using cached mmcv wheel $WHEEL"
    check_ops "$WHEEL" || die "cached mmcv wheel $WHEEL does not match FORCE_CUDA=$FORCE_CUDA; delete $WHEEL_DIR"
fi
"${PIP[@]}" install -q "$WHEEL" -c "$REQ"
# pip keeps an installed mmcv of the same version, which may be the other build (CPU / CUDA): replace it
MMCV_DIR="$("$PY" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("mmcv").origin))')"
if ! check_ops "$MMCV_DIR" >/dev/null 2>&1; then
    say "the installed mmcv's ops are the other build: reinstalling it from $WHEEL"
    "${PIP[@]}" install -q --force-reinstall --no-deps "$WHEEL"
fi
check_ops "$MMCV_DIR" || die "installed mmcv in $MMCV_DIR does not match FORCE_CUDA=$FORCE_CUDA"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$REPO"

# ---------------------------------------------------------------- verify
"$PY" - "$STACK" <<'EOF' || die "the installed stack does not import; see the error above"
import sys
import torch, torchvision, numpy, mmengine, mmcv, mmdet, pycocotools
from mmcv.ops import nms, RoIAlign  # compiled ops must be present
import cbam_det
print(f"setup_env: OK STACK={sys.argv[1]} torch {torch.__version__} torchvision {torchvision.__version__} "
      f"numpy {numpy.__version__} mmengine {mmengine.__version__} mmcv {mmcv.__version__} "
      f"mmdet {mmdet.__version__} cbam_det {cbam_det.__version__} cuda={torch.cuda.is_available()}")
EOF
build_kernels
echo "$WANT" > "$STAMP"
