#!/usr/bin/env bash
# The GPU check of cbam_det's Triton backend, in one call on a machine with one GPU, Python
# 3.12, torch and triton preinstalled, no OpenMMLab packages and no internet:
#
#   bash tools/analysis/gpu_check.sh [OUT_DIR]            # default work_dirs/gpu_check
#   bash tools/analysis/gpu_check.sh --dry-run [OUT_DIR]  # the same steps on the CPU
#   STEPS="tests kernels bench" bash tools/analysis/gpu_check.sh OUT_DIR   # some steps only
#
# 1. installs requirements/gpu_check.txt from wheelhouse/gpu (made beforehand by
#    tools/analysis/gpu_wheelhouse.sh; ~6 MB, carried with the tree) into OUT_DIR/site,
#    unless mmengine and mmdet import already; cbam_det runs with CBAM_DET_LAYERS_ONLY=1
#    (attention layers and kernels: no mmcv needed);
# 2. `tests`: the GPU test subset with TRITON_INTERPRET=0 (the Triton kernels compiled, on CUDA
#    tensors): tests/test_backends.py (against the torch backend), tests/test_triton_safety.py
#    (self-check, per-launch fallback, device guard, ties and NaN, low precision, launchers) and
#    tests/test_ops.py's CUDA tests (opcheck of the ops on CUDA, their Triton kernels against the
#    C++ ones where those compile);
#    beside it, on the CPU cores, every specialization of the shipped detection configs compiled
#    for this GPU's architecture (tests/test_kernel_census.py's slow compile test, checked for
#    registers, spills, FMA, NaN max);
#    `kernels`: tools/analysis/kernel_bandwidth.py, each kernel's GB/s at the stage-1 and stage-4
#    shapes against the measured copy bandwidth; writes OUT_DIR/kernel_bandwidth.{json,md};
# 3. `bench`: tools/analysis/gpu_bench.py at 2x3x800x1344, float32 and bf16 autocast: plain
#    ResNet-50, the eager reference CBAM, timm's CbamModule, ours as plugin and fused (CBAM
#    in all 16 blocks), SE, BAM x3, channels-last; each beside its bandwidth floor; writes
#    OUT_DIR/gpu_bench.{json,md};
# 4. `compiled`: the torch.compile variants (bf16) into OUT_DIR/compiled/.
# PASSES=FILE (default wheelhouse/gpu/passes.json, written by gpu_wheelhouse.sh): the passes the
# floors need, from `python tools/analysis/census.py --counted-passes FILE` on another machine;
# they are counted in Triton's interpreter, which fails on the GPU machine's triton 3.6 with its
# numpy ("only 0-dimensional arrays can be converted to Python scalars").
# Logs go to OUT_DIR/*.log; each step has a time limit: tests, kernels and bench within 8
# minutes, compiled within 5 (two device calls fit one session's 15 minutes of device time).
#
# --dry-run: the test subset in Triton's interpreter on CPU tensors, and the benchmark on
# the CPU at 2x3x32x32 (ResNet-50 at width 8) with every cbam_det variant on the triton backend (interpreted); the
# wheelhouse is checked for completeness for Python 3.12 (installed into a scratch folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-work_dirs/gpu_check}
PY=${PYTHON:-python3}
STEPS=${STEPS:-tests kernels bench compiled}
for s in $STEPS; do
    case $s in tests|kernels|bench|compiled) ;; *) echo "gpu_check: STEPS: unknown step '$s'; allowed: tests kernels bench compiled" >&2; exit 2;; esac
done
want() { [[ " $STEPS " == *" $1 "* ]]; }
if [ -z "${PASSES:-}" ] && [ -f wheelhouse/gpu/passes.json ]; then PASSES=$(pwd)/wheelhouse/gpu/passes.json; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
start=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - start ))s] $*"; }

# 1. dependencies of the layers
if [ -d wheelhouse/gpu ]; then
    if [ "$DRY" = 1 ]; then  # prove the wheelhouse is complete for the GPU machine's Python
        rm -rf "$OUT/site312"
        "$PY" -m pip install -q --no-index --find-links wheelhouse/gpu --no-deps --only-binary=:all: \
            --python-version 3.12 --implementation cp --target "$OUT/site312" -r requirements/gpu_check.txt
        say "wheelhouse/gpu installs for Python 3.12: $(ls "$OUT/site312" | grep -c dist-info) packages"
    elif ! "$PY" -c 'import mmengine, mmdet, pytest' 2>/dev/null; then
        "$PY" -m pip install -q --no-index --find-links wheelhouse/gpu --no-deps --target "$OUT/site" \
            -r requirements/gpu_check.txt
        export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
        say "installed requirements/gpu_check.txt into $OUT/site"
    fi
elif ! "$PY" -c 'import mmengine, mmdet, pytest' 2>/dev/null; then
    echo "gpu_check: mmengine/mmdet/pytest missing and no wheelhouse/gpu (run tools/analysis/gpu_wheelhouse.sh)" >&2
    exit 2
fi
export CBAM_DET_LAYERS_ONLY=1 CBAM_DET_NO_EXT=1  # no mmcv; the C++ CPU kernels are not under test here
"$PY" - <<'EOF'
import sys, torch, cbam_det
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))
assert 'mmcv' not in sys.modules, 'layers-only import pulled in mmcv'
EOF

# 2. the GPU test subset (the ahead-of-time compile test runs beside it on the CPU cores)
if [ "$DRY" = 1 ]; then export TRITON_INTERPRET=1; else export TRITON_INTERPRET=0; fi
rc_tests=0
if want tests; then
    ARCH=$("$PY" -c 'import torch; c = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0); print(f"{c[0]}{c[1]}")')
    if [ "$DRY" = 1 ]; then compile_limit=900; tests_limit=600; else compile_limit=190; tests_limit=190; fi
    say "tests/test_backends.py tests/test_triton_safety.py tests/test_ops.py -k cuda (TRITON_INTERPRET=$TRITON_INTERPRET), beside them every detection specialization compiled for sm_$ARCH"
    timeout $compile_limit "$PY" -m pytest -q -p no:cacheprovider tests/test_kernel_census.py -o addopts="" -m slow \
        -k "every_detection_specialization and sm_$ARCH" > "$OUT/compile.log" 2>&1 &
    compile_pid=$!
    timeout $tests_limit "$PY" -m pytest -q -p no:cacheprovider tests/test_backends.py tests/test_triton_safety.py \
        tests/test_ops.py -o addopts="" -m "not slow" -k "not compiles_within and (not test_ops or cuda)" \
        > "$OUT/tests.log" 2>&1 || rc_tests=$?
    tail -3 "$OUT/tests.log"
    wait $compile_pid || rc_tests=$?
    tail -3 "$OUT/compile.log"
fi

# the kernels' achieved bandwidth
rc_bench=0
if want kernels; then
    say "kernel bandwidth"
    if [ "$DRY" = 1 ]; then
        timeout 300 "$PY" tools/analysis/kernel_bandwidth.py --device cpu --shapes 1 24 5 9 --out-dir "$OUT" \
            > "$OUT/kernels.log" 2>&1 || rc_bench=$?
    else
        timeout 90 "$PY" tools/analysis/kernel_bandwidth.py ${PASSES:+--passes "$PASSES"} --out-dir "$OUT" > "$OUT/kernels.log" 2>&1 || rc_bench=$?
    fi
    tail -4 "$OUT/kernels.log"
fi

# 3. the benchmark (floors from the kernels' passes, counted in Triton's interpreter)
if want bench; then
    say "benchmark"
    if [ "$DRY" = 1 ]; then
        timeout 420 "$PY" tools/analysis/gpu_bench.py --device cpu --shape 2 3 32 32 --base-width 8 --repeats 1 --warmup 0 \
            --backend triton --out-dir "$OUT" > "$OUT/bench.log" 2>&1 || rc_bench=$?
    else
        timeout 170 "$PY" tools/analysis/gpu_bench.py ${PASSES:+--passes "$PASSES"} --out-dir "$OUT" > "$OUT/bench.log" 2>&1 || rc_bench=$?
    fi
    tail -25 "$OUT/bench.log"
fi

# 4. torch.compile: the plain network, ours (auto: the torch path) and the eager reference,
#    bf16 only, last and time-limited (inductor compiles for minutes); a failure is reported, not fatal
rc_compiled=0
if want compiled; then
    say "benchmark, torch.compile variants"
    if [ "$DRY" = 1 ]; then
        timeout 600 "$PY" tools/analysis/gpu_bench.py --device cpu --shape 2 3 32 32 --base-width 8 --repeats 1 --warmup 1 \
            --dtypes float32 --modes train --variants plain_compiled cbam_compiled cbam_eager_compiled --out-dir "$OUT/compiled" \
            > "$OUT/bench_compiled.log" 2>&1 || rc_compiled=$?
    else
        timeout 420 "$PY" tools/analysis/gpu_bench.py ${PASSES:+--passes "$PASSES"} --dtypes bfloat16 --modes train --repeats 5 \
            --variants plain_compiled cbam_compiled cbam_eager_compiled --out-dir "$OUT/compiled" \
            > "$OUT/bench_compiled.log" 2>&1 || rc_compiled=$?
    fi
    tail -8 "$OUT/bench_compiled.log"
fi
say "done ($STEPS): tests rc=$rc_tests, benchmark rc=$rc_bench, compiled rc=$rc_compiled; results in $OUT"
exit $(( rc_tests || rc_bench ))
