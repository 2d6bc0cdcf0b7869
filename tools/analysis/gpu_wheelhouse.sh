#!/usr/bin/env bash
# The wheelhouse for the lent GPU machine (Python 3.12.3, torch 2.11.0+cu130 and triton 3.6.0
# preinstalled with requirements/gpu_machine.txt, no internet): the cp312 wheels of
# requirements/gpu_check.txt in wheelhouse/gpu (git-ignored; a device call carries it with
# carry: ["wheelhouse/gpu"]), for tools/analysis/gpu_check.sh. Run here, with internet access to PyPI:
#
#   bash tools/analysis/gpu_wheelhouse.sh              # build mmcv once (~30 min on 2 cores), gather the rest
#   bash tools/analysis/gpu_wheelhouse.sh --no-build   # gather; mmcv only from the cache (else left out)
#   bash tools/analysis/gpu_wheelhouse.sh --dry-run    # what it would do and whether it can; changes nothing
#   options: --no-passes (skip passes.json)
#
# 1. onedl-mmcv 2.3.6 with CUDA ops for TORCH_CUDA_ARCH_LIST (default 9.0: H100, H200), built against
#    PyPI's torch 2.11.0 (its CUDA 13.0 build, the machine's torch) by a CUDA 13.x nvcc, in a Python
#    3.12 virtual environment ($CBAM_DET_CACHE/venvs/mmcv-build-py3.12-torch2.11.0), and cached in
#    $CBAM_DET_CACHE/wheels/<key> under the key tools/setup_env.sh uses
#    (onedl-mmcv-2.3.6_py3.12_torch2.11.0_cu130-sm9_0_gccX.Y.Z); a cached wheel is reused, not rebuilt.
#    The wheel must hold CUDA device code (.nv_fatbin; cuobjdump lists its sm_XX images) and import
#    in that environment (mmcv.ops.nms, RoIAlign; the CUDA version it was compiled with).
# 2. the other wheels: pip download (binary only) for CPython 3.12 on manylinux x86-64; onedl-mmdetection
#    is published as a source distribution only and is built here (pure Python: py3-none-any).
# 3. wheelhouse/gpu/passes.json: the kernels' passes (census.py --counted-passes, Triton's interpreter),
#    which the GPU tools' bandwidth floors read (the interpreter fails on the machine's triton 3.6).
# 4. tools/analysis/wheelhouse_check.py: every wheel fits CPython 3.12, its requirements are met by the
#    set or by the machine's packages, nothing the machine has is carried, and the tree plus the
#    wheelhouse fit 60 MiB.
#
# Python 3.12 to build with: PY312=/path/to/python3.12, else python3.12 on PATH, else pyenv's newest
# 3.12 ($(pyenv root)/versions/3.12.*), else `uv python find 3.12`. It needs its headers (Python.h) and
# the venv module; on Debian: apt-get install python3.12-dev python3.12-venv where offered, else
# `pyenv install 3.12` or `uv python install 3.12`. PYTHON (default .venv/onedl/bin/python, else
# python3): the interpreter that downloads and checks (census.py needs torch and cbam_det).
# Environment: CBAM_DET_CACHE (default ~/.cache/cbam_det), TORCH_CUDA_ARCH_LIST (9.0), MAX_JOBS (cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
DRY=0 BUILD=1 PASSES=1
for a in "$@"; do
    case $a in
        --dry-run) DRY=1 ;;
        --no-build) BUILD=0 ;;
        --no-passes) PASSES=0 ;;
        *) echo "gpu_wheelhouse: unknown option '$a'; allowed: --dry-run --no-build --no-passes" >&2; exit 2 ;;
    esac
done
OUT=wheelhouse/gpu
CACHE="${CBAM_DET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cbam_det}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/onedl/bin/python ]]; then PYTHON=.venv/onedl/bin/python; else PYTHON=python3; fi
fi
MMCV_VERSION=2.3.6 TORCH_VERSION=2.11.0 TORCH_CUDA=13.0
ARCHS="${TORCH_CUDA_ARCH_LIST:-9.0}"
say() { echo "gpu_wheelhouse: $*"; }
problems=()

# ---------------------------------------------------------------- prerequisites of the mmcv build
find_py312() {
    local c
    if [[ -n "${PY312:-}" ]]; then echo "$PY312"; return; fi
    if command -v python3.12 >/dev/null 2>&1 && python3.12 -c '' 2>/dev/null; then command -v python3.12; return; fi
    if command -v pyenv >/dev/null 2>&1; then
        for c in $(ls -d "$(pyenv root)"/versions/3.12.* 2>/dev/null | sort -V -r); do
            if [[ -x "$c/bin/python3.12" ]]; then echo "$c/bin/python3.12"; return; fi
        done
    fi
    if command -v uv >/dev/null 2>&1; then uv python find 3.12 2>/dev/null && return; fi
    return 0
}
CXX_ID="$( (g++ -dumpfullversion 2>/dev/null || c++ -dumpversion 2>/dev/null || echo none) | head -1)"
KEY="onedl-mmcv-${MMCV_VERSION}_py3.12_torch${TORCH_VERSION}_cu${TORCH_CUDA//./}-sm${ARCHS//[;. +]/_}_gcc${CXX_ID}"
WHEEL_DIR="$CACHE/wheels/$KEY"
CACHED="$(ls "$WHEEL_DIR"/onedl_mmcv-"$MMCV_VERSION"-cp312-*.whl 2>/dev/null | head -1 || true)"
BUILD_VENV="$CACHE/venvs/mmcv-build-py3.12-torch$TORCH_VERSION"
PY312=$(find_py312)
say "mmcv cache key: $KEY ($([[ -n "$CACHED" ]] && echo "cached: $CACHED" || echo 'not cached'))"
if [[ -z "$CACHED" && $BUILD == 1 ]]; then
    if [[ -z "$PY312" ]]; then
        problems+=("no Python 3.12: set PY312, or install one (pyenv install 3.12 / uv python install 3.12 / apt-get install python3.12-dev python3.12-venv)")
    elif ! "$PY312" -c 'import sys, venv, sysconfig, os; sys.exit(not (sys.version_info[:2] == (3, 12) and os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))))' 2>/dev/null; then
        problems+=("PY312=$PY312 is not a Python 3.12 with its headers (Python.h) and venv")
    else
        say "Python 3.12: $PY312 ($("$PY312" -c 'import platform; print(platform.python_version())'))"
    fi
    if ! command -v nvcc >/dev/null 2>&1; then
        problems+=("no nvcc on PATH: the build needs a CUDA 13.x toolkit")
    else
        NVCC_VER="$(nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
        [[ "${NVCC_VER%%.*}" == "${TORCH_CUDA%%.*}" ]] || problems+=("nvcc is CUDA $NVCC_VER; torch $TORCH_VERSION is built with CUDA $TORCH_CUDA: put a CUDA 13.x nvcc first on PATH")
        say "nvcc: CUDA ${NVCC_VER:-?}; g++ $CXX_ID; TORCH_CUDA_ARCH_LIST=$ARCHS; MAX_JOBS=${MAX_JOBS:-$(nproc)}"
    fi
    [[ "$CXX_ID" != none ]] || problems+=("no C++ compiler (g++)")
fi
BUILD_CMD="TORCH_CUDA_ARCH_LIST=$ARCHS MMCV_WITH_OPS=1 FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} $BUILD_VENV/bin/python -m pip wheel --no-cache-dir --no-build-isolation --no-deps --no-binary onedl-mmcv -w $WHEEL_DIR.tmp onedl-mmcv==$MMCV_VERSION"
if [[ $DRY == 1 ]]; then
    if [[ -n "$CACHED" ]]; then say "would copy the cached mmcv wheel into $OUT"
    elif [[ $BUILD == 1 ]]; then
        say "would create $BUILD_VENV with $PY312 and install torch===$TORCH_VERSION (PyPI, CUDA $TORCH_CUDA) 'setuptools<81' ninja psutil wheel numpy opencv-python-headless"
        say "would build (CUDA_HOME from nvcc, torch's nvidia-* headers added): $BUILD_CMD"
    else say "--no-build and no cached mmcv wheel: $OUT would lack onedl-mmcv (the detector step needs it)"; fi
    say "would download the wheels of requirements/gpu_check.txt for cp312 manylinux x86-64 into $OUT and build onedl-mmdetection from its sdist"
    [[ $PASSES == 1 ]] && say "would count the kernels' passes into $OUT/passes.json ($PYTHON tools/analysis/census.py --counted-passes)"
    say "would check: $PYTHON tools/analysis/wheelhouse_check.py --budget-mib 60"
    if (( ${#problems[@]} )); then
        for p in "${problems[@]}"; do say "cannot build: $p"; done
        exit 3
    fi
    say "dry run: the prerequisites are there"
    exit 0
fi
if (( ${#problems[@]} )); then
    for p in "${problems[@]}"; do echo "gpu_wheelhouse: ERROR: $p" >&2; done
    exit 1
fi

# ---------------------------------------------------------------- 2. the small wheels (first: the build's import check uses them)
mkdir -p "$OUT" "$OUT.src"
rm -f "$OUT"/*.whl
grep -v '^#' requirements/gpu_check.txt | grep -v -e '^onedl-mmdetection' -e '^onedl-mmcv' | grep . > "$OUT.src/binary.txt"
"$PYTHON" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --no-deps -d "$OUT" -r "$OUT.src/binary.txt"
MMDET=$(grep '^onedl-mmdetection' requirements/gpu_check.txt)
"$PYTHON" -m pip download -q --no-deps --no-binary=:all: -d "$OUT.src" "$MMDET"
# with build isolation: its pyproject's license field needs a newer setuptools than an old interpreter has
"$PYTHON" -m pip wheel -q --no-deps -w "$OUT" "$OUT.src"/onedl_mmdetection-*.tar.gz
rm -rf "$OUT.src"

# ---------------------------------------------------------------- 1. mmcv with CUDA ops (cached)
check_fatbin() {  # the wheel's compiled ops hold CUDA device code; list the sm_XX images where cuobjdump is
    "$PYTHON" - "$1" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    ext = [n for n in z.namelist() if n.startswith('mmcv/_ext') and n.endswith('.so')]
    data = z.read(ext[0]) if ext else b''
if b'.nv_fatbin' not in data:
    sys.exit(f'gpu_wheelhouse: ERROR: {sys.argv[1]} has no CUDA device code in mmcv/_ext')
print(f'gpu_wheelhouse: {sys.argv[1].rsplit("/", 1)[-1]}: mmcv/_ext holds CUDA device code')
PYEOF
    local dump
    dump=$(command -v cuobjdump || "$PYTHON" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))' 2>/dev/null || true)
    if [[ -n "$dump" && -x "$dump" ]]; then  # on PATH, else the one Triton bundles
        local tmp; tmp=$(mktemp -d)
        "$PYTHON" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract(n, sys.argv[2]) for n in z.namelist() if n.startswith("mmcv/_ext")]' "$1" "$tmp"
        say "cuobjdump --list-elf: $("$dump" --list-elf "$tmp"/mmcv/_ext*.so 2>&1 | grep -o 'sm_[0-9]*' | sort | uniq -c | tr '\n' ' ')"
        rm -rf "$tmp"
    fi
}
if [[ -z "$CACHED" && $BUILD == 1 ]]; then
    if [[ ! -x "$BUILD_VENV/bin/python" ]]; then
        say "creating $BUILD_VENV ($PY312)"
        mkdir -p "$(dirname "$BUILD_VENV")"
        "$PY312" -m venv "$BUILD_VENV"
    fi
    BPIP=("$BUILD_VENV/bin/python" -m pip --disable-pip-version-check)
    # "===": PyPI's build (CUDA 13.0), never a local +cpu wheel a find-links folder may offer
    "${BPIP[@]}" install -q "torch===$TORCH_VERSION" "setuptools>=64,<81" ninja psutil wheel numpy opencv-python-headless
    GOT="$("$BUILD_VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0], torch.version.cuda)')"
    [[ "$GOT" == "$TORCH_VERSION $TORCH_CUDA" ]] || { echo "gpu_wheelhouse: ERROR: $BUILD_VENV has torch $GOT, want $TORCH_VERSION $TORCH_CUDA" >&2; exit 1; }
    if [[ -z "${CUDA_HOME:-}${CUDA_PATH:-}" ]]; then  # as tools/setup_env.sh: the toolkit nvcc itself reports
        CUDA_HOME="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=\(.*\)\/bin\/\.\.$/\1/p' | head -n1)"
        [[ -n "$CUDA_HOME" && -f "$CUDA_HOME/include/cuda_runtime_api.h" ]] || { echo "gpu_wheelhouse: ERROR: cannot find the CUDA toolkit of $(command -v nvcc); set CUDA_HOME" >&2; exit 1; }
        export CUDA_HOME
    fi
    NV_INC="$("$BUILD_VENV/bin/python" -c 'import glob, os, nvidia; print(":".join(sorted({d for r in nvidia.__path__ for d in glob.glob(os.path.join(r, "*", "include"))})))' 2>/dev/null || true)"
    if [[ -n "$NV_INC" ]]; then  # the CUDA library headers torch includes (cusparse.h, cublas_v2.h, ...)
        export CPLUS_INCLUDE_PATH="${CPLUS_INCLUDE_PATH:+$CPLUS_INCLUDE_PATH:}$NV_INC"
        export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }-isystem ${NV_INC//:/ -isystem }"
    fi
    say "building onedl-mmcv $MMCV_VERSION with CUDA ops for $ARCHS (CUDA_HOME=$CUDA_HOME) on $(nproc) cores, started $(date +%H:%M:%S)"
    say "$BUILD_CMD"
    rm -rf "$WHEEL_DIR.tmp" && mkdir -p "$WHEEL_DIR.tmp"
    start=$(date +%s)
    TORCH_CUDA_ARCH_LIST="$ARCHS" MMCV_WITH_OPS=1 FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "${BPIP[@]}" wheel -q --no-cache-dir --no-build-isolation --no-deps --no-binary onedl-mmcv \
        -w "$WHEEL_DIR.tmp" "onedl-mmcv==$MMCV_VERSION"
    check_fatbin "$(ls "$WHEEL_DIR.tmp"/*.whl | head -1)"
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
    CACHED="$(ls "$WHEEL_DIR"/*.whl | head -1)"
    say "cached $CACHED (built in $(( $(date +%s) - start )) s, $(du -m "$CACHED" | cut -f1) MB)"
    # it imports beside torch 2.11.0 (mmengine and the small wheels from the wheelhouse, no deps)
    "${BPIP[@]}" install -q --no-deps "$CACHED" "$OUT"/onedl_mmengine-*.whl "$OUT"/addict-*.whl "$OUT"/yapf-*.whl \
        "$OUT"/platformdirs-*.whl "$OUT"/termcolor-*.whl
    "${BPIP[@]}" install -q matplotlib rich pyyaml packaging pillow
    "$BUILD_VENV/bin/python" -c 'import torch; from mmcv.ops import nms, RoIAlign, get_compiling_cuda_version; print("gpu_wheelhouse: mmcv imports beside torch", torch.__version__, "ops compiled with CUDA", get_compiling_cuda_version())' \
        || { echo "gpu_wheelhouse: ERROR: the built mmcv does not import in $BUILD_VENV (the wheel stays cached in $WHEEL_DIR; delete it to rebuild)" >&2; exit 1; }
elif [[ -n "$CACHED" ]]; then
    say "using the cached mmcv wheel $CACHED"
    check_fatbin "$CACHED"
fi
if [[ -n "$CACHED" ]]; then
    cp "$CACHED" "$OUT/"
else
    say "WARNING: no mmcv wheel (--no-build and none cached): the detector step of gpu_check.sh needs it"
fi

# ---------------------------------------------------------------- 3. the passes the GPU tools' floors need
if [[ $PASSES == 1 ]]; then
    CBAM_DET_LAYERS_ONLY=1 "$PYTHON" tools/analysis/census.py --counted-passes "$OUT/passes.json"
fi

# ---------------------------------------------------------------- 4. the set, checked
MISSING=()
[[ -n "$CACHED" ]] || MISSING=(--allow-missing onedl-mmcv)
"$PYTHON" tools/analysis/wheelhouse_check.py --wheelhouse "$OUT" --budget-mib 60 "${MISSING[@]}" --json "$OUT/check.json"
du -sh "$OUT"
ls "$OUT"
