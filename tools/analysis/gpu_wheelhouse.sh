#!/usr/bin/env bash
# Fill wheelhouse/gpu with the cp312 wheels of requirements/gpu_check.txt for the GPU check
# (tools/analysis/gpu_check.sh), on a machine with internet access to PyPI.
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
du -sh "$OUT"
ls "$OUT"
