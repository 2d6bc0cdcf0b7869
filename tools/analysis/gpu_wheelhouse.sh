#!/usr/bin/env bash
# Fill wheelhouse/gpu with the cp312 wheels of requirements/gpu_check.txt for the GPU check
# (tools/analysis/gpu_check.sh), on a machine with internet access to PyPI, and the kernels'
# counted passes (census.py --counted-passes) into wheelhouse/gpu/passes.json.
#   bash tools/analysis/gpu_wheelhouse.sh [PYTHON]
# onedl-mmdetection is published as a source distribution only: it is pure Python, so its
# wheel is built here (any Python >= 3.10 builds the same py3-none-any wheel).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-python3}
OUT=wheelhouse/gpu
mkdir -p "$OUT" "$OUT.src"
grep -v '^#' requirements/gpu_check.txt | grep -v '^onedl-mmdetection' | grep . > "$OUT.src/binary.txt"
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --no-deps -d "$OUT" -r "$OUT.src/binary.txt"
MMDET=$(grep '^onedl-mmdetection' requirements/gpu_check.txt)
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$OUT.src" "$MMDET"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "$OUT.src"/onedl_mmdetection-*.tar.gz
rm -rf "$OUT.src"
# the passes the GPU tools' floors need, counted here in Triton's interpreter (which fails on
# the GPU machine's triton 3.6 with its numpy); gpu_check.sh reads them from there
CBAM_DET_LAYERS_ONLY=1 "$PY" tools/analysis/census.py --counted-passes "$OUT/passes.json"
du -sh "$OUT"
ls "$OUT"
