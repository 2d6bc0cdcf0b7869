#!/usr/bin/env bash
# One-command set-up of the pinned cbam_det stack (torch 2.5.1, mmengine 0.10.7,
# mmcv 2.1.0 built from source with ops, mmdet 3.3.0) in a virtual environment.
#
#   bash tools/setup_env.sh            # or: make setup
#
# Environment variables:
#   VENV            virtual environment to create/use       (default: <repo>/.venv)
#   PYTHON          interpreter to create it with           (default: python3.11, else python3)
#   CBAM_DET_CACHE  cache for the built mmcv wheel          (default: ~/.cache/cbam_det)
#   FORCE_CUDA      1: build mmcv's CUDA ops, 0: CPU ops only (default: auto-detect)
#
# Idempotent: a second run with an unchanged stack only verifies the imports.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
CACHE="${CBAM_DET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cbam_det}"
MMCV_VERSION="2.1.0"

die() { echo "setup_env: ERROR: $*" >&2; exit 1; }
say() { echo "setup_env: $*"; }

# ---------------------------------------------------------------- interpreter
if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11
    elif command -v python3 >/dev/null 2>&1; then PYTHON=python3
    else die "no python3 found on PATH; install Python 3.11 (tested) or set PYTHON=/path/to/python"; fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable on PATH"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$PYVER" in
    3.9|3.10|3.11|3.12) ;;
    *) die "Python $PYVER is not supported: torch 2.5.1 / mmcv 2.1.0 need Python 3.9-3.12 (tested: 3.11); set PYTHON=" ;;
esac
"$PYTHON" -c 'import venv' 2>/dev/null || die "the 'venv' module is missing for $PYTHON (Debian: apt-get install python3-venv)"

# ---------------------------------------------------------------- compilers
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || \
    die "no C++ compiler (g++) found: mmcv's ops are compiled from source (Debian: apt-get install build-essential)"
CXX_ID="$( (g++ -dumpfullversion 2>/dev/null || c++ -dumpversion) | head -1)"
"$PYTHON" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
    || die "Python.h not found for $PYTHON: install the Python development headers (Debian: apt-get install python3-dev)"

# ---------------------------------------------------------------- venv
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating virtual environment $VENV (Python $PYVER)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# cbam_det's fused CPU kernels: compiled once per source/CPU/torch into ~/.cache/cbam_det/ext
# (about 25 s; instant when cached). Without them everything still runs, on the slower
# PyTorch path, so a failure here is a warning.
build_kernels() {
    "$PY" -m cbam_det.ops 2>&1 | grep -v -e Warning -e 'from torch' -e CUDA_HOME | sed 's/^/setup_env: /' \
        || true
    "$PY" -c 'import sys; from cbam_det.ops import gate_ext; sys.exit(gate_ext() is None)' 2>/dev/null \
        || say "WARNING: the fused CPU kernels are unavailable; attention runs on the PyTorch path"
}

STAMP="$VENV/.cbam_det_stack"
WANT="$(cat "$REPO/requirements/"*.txt "$REPO/tools/setup_env.sh" | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && \
   "$PY" -c 'import torch, mmcv, mmdet, mmengine, pycocotools, pytest; from mmcv.ops import nms' 2>/dev/null; then
    "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$REPO" >/dev/null
    build_kernels
    say "stack already installed and unchanged ($VENV); nothing to do"
    exit 0
fi

say "installing the pinned stack (torch 2.5.1 is large on a cold cache)"
"${PIP[@]}" install -q --upgrade "pip>=23,<25"
"${PIP[@]}" install -r "$REPO/requirements/build.txt" -r "$REPO/requirements/runtime.txt" -r "$REPO/requirements/tests.txt"

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
if [[ "$FORCE_CUDA" == "1" ]]; then
    command -v nvcc >/dev/null 2>&1 || die "FORCE_CUDA=1 but nvcc is not on PATH"
    ARCHS="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print(";".join(sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})))' 2>/dev/null || true)}"
    export TORCH_CUDA_ARCH_LIST="$ARCHS"
    OPS_TAG="cu${TORCH_CUDA//./}-sm${ARCHS//[;. ]/_}"
else
    OPS_TAG="cpu"
fi
KEY="mmcv-${MMCV_VERSION}_py${PYVER}_torch${TORCH_TAG}_${OPS_TAG}_gcc${CXX_ID}"
WHEEL_DIR="$CACHE/wheels/$KEY"
WHEEL="$(ls "$WHEEL_DIR"/mmcv-*.whl 2>/dev/null | head -1 || true)"
if [[ -z "$WHEEL" ]]; then
    say "building mmcv $MMCV_VERSION with ops ($OPS_TAG) from source: about 7 minutes on 2 cores"
    mkdir -p "$WHEEL_DIR.tmp"
    MMCV_WITH_OPS=1 FORCE_CUDA="$FORCE_CUDA" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "${PIP[@]}" wheel --no-build-isolation --no-deps --no-binary mmcv \
        -w "$WHEEL_DIR.tmp" "mmcv==$MMCV_VERSION"
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
    WHEEL="$(ls "$WHEEL_DIR"/mmcv-*.whl | head -1)"
    say "cached $WHEEL"
else
    say "using cached mmcv wheel $WHEEL"
fi
"${PIP[@]}" install -q "$WHEEL" -c "$REPO/requirements/runtime.txt"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$REPO"

# ---------------------------------------------------------------- verify
"$PY" - <<'EOF' || die "the installed stack does not import; see the error above"
import torch, torchvision, numpy, mmengine, mmcv, mmdet, pycocotools
from mmcv.ops import nms, RoIAlign  # compiled ops must be present
import cbam_det
print(f"setup_env: OK torch {torch.__version__} torchvision {torchvision.__version__} numpy {numpy.__version__} "
      f"mmengine {mmengine.__version__} mmcv {mmcv.__version__} mmdet {mmdet.__version__} "
      f"cbam_det {cbam_det.__version__} cuda={torch.cuda.is_available()}")
EOF
build_kernels
echo "$WANT" > "$STAMP"
