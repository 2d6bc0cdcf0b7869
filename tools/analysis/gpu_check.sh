#!/usr/bin/env bash
# The GPU check of cbam_det, in one or two calls on a machine with one GPU, Python 3.12, torch and
# triton preinstalled, no OpenMMLab packages and no internet:
#
#   bash tools/analysis/gpu_check.sh [OUT_DIR]            # default work_dirs/gpu_check
#   bash tools/analysis/gpu_check.sh --dry-run [OUT_DIR]  # the same steps on the CPU
#   STEPS="tests kernels bench" bash tools/analysis/gpu_check.sh OUT_DIR   # some steps only
#   STEPS=detector DETECTOR_PARTS=demos PACK=$OUT/demos.tgz bash tools/analysis/gpu_check.sh   # device call 1
#   STEPS=detector DETECTOR_PARTS="bench profile" PACK=$OUT/detector.tgz bash tools/analysis/gpu_check.sh   # call 2
#
# 1. installs requirements/gpu_check.txt from wheelhouse/gpu (made beforehand by
#    tools/analysis/gpu_wheelhouse.sh: mmengine, mmdet, mmcv with CUDA ops for sm_90 and what the
#    machine lacks of their dependencies, ~46 MB; a device call carries it) into OUT_DIR/site,
#    unless they import already (a warm machine keeps OUT_DIR/site: it is reused while the
#    wheelhouse is unchanged); first the machine's own packages are checked against the wheels'
#    requirements with their real versions (tools/analysis/wheelhouse_check.py --installed; notes,
#    not fatal). mmcv is needed by the detector step only: the other steps run cbam_det with
#    CBAM_DET_LAYERS_ONLY=1 (attention layers and kernels) and install the rest without it;
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
# 4. `graph`: tools/analysis/cuda_graph_check.py: a ResNet-50 training step (bf16 autocast, 2x3x800x1344,
#    the bench's shape: its kernels are compiled already)
#    with CBAM (auto: the Triton kernels), CBAM on the torch backend, SE, BAM x3 and none, each captured
#    in one CUDA graph (forward, backward, running statistics) and replayed against the eager step on
#    the same input from the same state: loss, gradients, buffers; eager and replay ms
#    (OUT_DIR/cuda_graph.{json,md});
#    `compiled`: the torch.compile variants (bf16) into OUT_DIR/compiled/;
# 5. `detector` (the full stack, CBAM_DET_LAYERS_ONLY=0; DETECTOR_PARTS, default "demos bench profile"):
#    `demos`: the demo data (tools/misc/make_demo_data.py, into data/demo if missing), then for the
#    COCO demo (configs/demo/faster-rcnn_r50w16-cbam_fpn_demo.py) and the VOC demo
#    (configs/demo/stairnet_r18w16-cbam_demo_voc.py), side by side: tools/train.py --amp for the
#    full schedule with randomness.seed=$SEED (default 0), then tools/test.py; their mAP beside the
#    CPU demo's (results/cpu/demo_map.json) in OUT_DIR/demos.{json,md};
#    `bench`: tools/analysis/gpu_detector.py bench: Faster R-CNN R50-FPN from
#    configs/faster_rcnn/faster-rcnn_r50-cbam_fpn_1x_coco.py (random init) at 2x3x800x1344,
#    mmengine's train_step with OptimWrapper / AmpOptimWrapper: plain, CBAM (auto), CBAM (torch),
#    C4 with CBAM and its plain baseline, in float16 (AMP), bfloat16 and float32: step ms, x plain,
#    peak memory (OUT_DIR/detector_bench.{json,md});
#    `profile`: gpu_detector.py profile: torch.profiler over steps of each detector variant and of
#    gpu_bench.py's ResNet-50 variants: GPU-busy against step time, kernels and launches per step,
#    top kernels, the attention modules' host time; one gzipped trace of a CBAM detector step
#    (OUT_DIR/detector_profile.{json,md}, trace_detector_cbam.json.gz).
#    Time limits: demos 240 s of training (both at once) and 75 s of testing; bench 180 s; profile
#    140 s (bench and profile write their tables as they go, so a limit keeps what was measured);
#    with the machine's start, `demos` in one device call and `bench profile` in a second fit the
#    15 minutes of a session (docs/tools.md). Its tables are printed last.
# PASSES=FILE (default wheelhouse/gpu/passes.json, written by gpu_wheelhouse.sh): the passes the
# floors need, from `python tools/analysis/census.py --counted-passes FILE` on another machine;
# they are counted in Triton's interpreter, which fails on the GPU machine's triton 3.6 with its
# numpy ("only 0-dimensional arrays can be converted to Python scalars").
# PACK=FILE.tgz: at the end, OUT_DIR packed into one file without the installed packages, the
# demo data and the checkpoints (a device call brings back at most 8 files).
# Logs go to OUT_DIR/*.log; each step has a time limit: tests, kernels and bench within 8
# minutes, graph within 100 s, compiled within 7 (two device calls fit one session's 15 minutes of
# device time: STEPS="tests kernels bench graph", then STEPS=compiled or the detector's parts).
#
# --dry-run: the test subset in Triton's interpreter on CPU tensors, and the benchmark on
# the CPU at 2x3x32x32 (ResNet-50 at width 8) with every cbam_det variant on the triton backend
# (interpreted); the detector step on the CPU at 2x3x64x96 (base width 8), the demos on a tiny
# copy of the demo data for 2 iterations without --amp (mmengine's AmpOptimWrapper needs an
# accelerator); the wheelhouse is checked for Python 3.12: installed into a scratch folder, and
# each wheel's requirements against the set and the machine's recorded packages.
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-work_dirs/gpu_check}
PY=${PYTHON:-python3}
STEPS=${STEPS:-tests kernels bench graph compiled}
for s in $STEPS; do
    case $s in tests|kernels|bench|graph|compiled|detector) ;; *) echo "gpu_check: STEPS: unknown step '$s'; allowed: tests kernels bench graph compiled detector" >&2; exit 2;; esac
done
want() { [[ " $STEPS " == *" $1 "* ]]; }
DETECTOR_PARTS=${DETECTOR_PARTS:-demos bench profile}
for s in $DETECTOR_PARTS; do
    case $s in demos|bench|profile) ;; *) echo "gpu_check: DETECTOR_PARTS: unknown part '$s'; allowed: demos bench profile" >&2; exit 2;; esac
done
part() { [[ " $DETECTOR_PARTS " == *" $1 "* ]]; }
SEED=${SEED:-0}
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "gpu_check: SEED: want a non-negative integer, got '$SEED'" >&2; exit 2; }
if [ -n "${PACK:-}" ] && [[ "$PACK" != *.tgz ]]; then echo "gpu_check: PACK: want a .tgz file name, got '$PACK'" >&2; exit 2; fi
if [ -z "${PASSES:-}" ] && [ -f wheelhouse/gpu/passes.json ]; then PASSES=$(pwd)/wheelhouse/gpu/passes.json; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
start=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - start ))s] $*"; }

# 1. dependencies: the layers' (mmengine, mmdet, pytest), and the detector step's mmcv with ops
IMPORTS='import mmengine, mmdet, pytest'
if want detector; then IMPORTS="$IMPORTS; from mmcv.ops import nms, RoIAlign"; fi
if [ -d wheelhouse/gpu ]; then
    # the requirement list without onedl-mmcv where its wheel is not built (the layers-only steps)
    MMCV_WHL=$(ls wheelhouse/gpu/onedl_mmcv-*.whl 2>/dev/null | head -1 || true)
    grep -v '^#' requirements/gpu_check.txt | grep . > "$OUT/requirements.txt"
    ALLOW=()
    if [ -z "$MMCV_WHL" ]; then
        grep -v '^onedl-mmcv' "$OUT/requirements.txt" > "$OUT/requirements.tmp" && mv "$OUT/requirements.tmp" "$OUT/requirements.txt"
        ALLOW=(--allow-missing onedl-mmcv)
        if want detector && [ "$DRY" = 0 ]; then
            echo "gpu_check: the detector step needs mmcv with CUDA ops: no wheelhouse/gpu/onedl_mmcv-*.whl (run tools/analysis/gpu_wheelhouse.sh)" >&2
            exit 2
        fi
    fi
    STAMP=$( (cat "$OUT/requirements.txt"; stat -c '%n %s' wheelhouse/gpu/*.whl) | md5sum | cut -c1-16)  # names, sizes
    if [ "$DRY" = 1 ]; then  # prove the wheelhouse is complete for the GPU machine's Python
        rm -rf "$OUT/site312"
        "$PY" -m pip install -q --no-index --find-links wheelhouse/gpu --no-deps --only-binary=:all: \
            --python-version 3.12 --implementation cp --target "$OUT/site312" -r "$OUT/requirements.txt"
        say "wheelhouse/gpu installs for Python 3.12: $(ls "$OUT/site312" | grep -c dist-info) packages"
        "$PY" tools/analysis/wheelhouse_check.py --wheelhouse wheelhouse/gpu "${ALLOW[@]}" > "$OUT/wheelhouse_check.log" 2>&1 \
            || { cat "$OUT/wheelhouse_check.log"; echo "gpu_check: the wheelhouse misses a requirement (above)" >&2; exit 2; }
        say "$(tail -1 "$OUT/wheelhouse_check.log") (each wheel's requirements met by the set or the machine's packages)"
    else
        if [ -f "$OUT/site/.stamp" ] && [ "$(cat "$OUT/site/.stamp")" = "$STAMP" ]; then  # a warm machine's earlier call
            export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
        fi
        if ! "$PY" -c "$IMPORTS" 2>/dev/null; then
            # this machine's packages, with their real versions, against the wheels' requirements
            "$PY" tools/analysis/wheelhouse_check.py --installed --wheelhouse wheelhouse/gpu "${ALLOW[@]}" \
                > "$OUT/wheelhouse_installed.log" 2>&1 || true
            say "the machine's packages against the wheels' requirements: $(tail -1 "$OUT/wheelhouse_installed.log") (OUT_DIR/wheelhouse_installed.log)"
            rm -rf "$OUT/site"
            "$PY" -m pip install -q --no-index --find-links wheelhouse/gpu --no-deps --no-compile --target "$OUT/site" \
                -r "$OUT/requirements.txt"
            echo "$STAMP" > "$OUT/site/.stamp"
            export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
            say "installed $(grep -c . "$OUT/requirements.txt") packages of requirements/gpu_check.txt into $OUT/site"
        fi
    fi
elif ! "$PY" -c "$IMPORTS" 2>/dev/null; then
    echo "gpu_check: one of mmengine, mmdet, pytest (and mmcv.ops for the detector step) is missing and no wheelhouse/gpu (run tools/analysis/gpu_wheelhouse.sh)" >&2
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

# 4. the training step in one CUDA graph, replayed against eager (no host sync or data-dependent
#    host decision may be in it); then torch.compile: the plain network, ours (auto: the torch path) and the eager reference,
#    bf16 only, last and time-limited (inductor compiles for minutes); a failure is reported, not fatal
rc_graph=0
if want graph; then
    say "CUDA graph: a ResNet-50 training step captured and replayed against eager"
    if [ "$DRY" = 1 ]; then
        timeout 300 "$PY" tools/analysis/cuda_graph_check.py --device cpu --width 4 --shape 2 3 32 32 --repeats 1 --warmup 1 \
            --backend triton --variants plain cbam \
            --out-dir "$OUT" > "$OUT/cuda_graph.log" 2>&1 || rc_graph=$?
    else
        timeout 100 "$PY" tools/analysis/cuda_graph_check.py --out-dir "$OUT" > "$OUT/cuda_graph.log" 2>&1 || rc_graph=$?
    fi
    tail -12 "$OUT/cuda_graph.log"
fi
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
# 5. the detector with mmdet's tools and the full stack (mmcv with ops): the demos trained and tested,
#    the training step's cost with and without attention, and where its milliseconds go
rc_detector=0
tables=()
timed() {  # timed DIR NAME LIMIT CMD...: DIR/NAME.log, DIR/NAME.json = {"rc", "seconds", "limit"}
    local dir=$1 name=$2 limit=$3 t0 rc=0
    shift 3
    t0=$(date +%s)
    timeout "$limit" "$@" > "$dir/$name.log" 2>&1 || rc=$?
    echo "{\"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"limit\": $limit}" > "$dir/$name.json"
    return $rc
}
if want detector; then
    DET=(env CBAM_DET_LAYERS_ONLY=0 "$PY")
    "${DET[@]}" - <<'EOF' || { echo "gpu_check: the detector step's stack does not import (above)" >&2; exit 2; }
import torch, mmcv, mmdet, mmengine
from mmcv.ops import RoIAlign, get_compiling_cuda_version, nms
import cbam_det
print(f'mmengine {mmengine.__version__}, mmcv {mmcv.__version__} (ops compiled with CUDA {get_compiling_cuda_version()}), '
      f'mmdet {mmdet.__version__}, cbam_det {cbam_det.__version__}')
if torch.cuda.is_available():  # mmcv's CUDA kernels load for this GPU
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]], device='cuda')
    keep = nms(boxes, torch.tensor([0.9, 0.8], device='cuda'), 0.5)[1]
    feats = RoIAlign((7, 7), 1.0)(torch.randn(1, 4, 16, 16, device='cuda'), torch.tensor([[0.0, 1, 1, 9, 9]], device='cuda'))
    print('mmcv CUDA ops on', torch.cuda.get_device_name(0), ': nms kept', keep.tolist(), ', RoIAlign', tuple(feats.shape))
EOF
    if [ "$DRY" = 1 ]; then
        DEVICE=(--device cpu)
        AMP=()  # mmengine's AmpOptimWrapper needs an accelerator
        demo_train_limit=600 demo_test_limit=300 bench_limit=600 profile_limit=600
        DATA="$OUT/demo_data"
        BENCH=(--shape 2 3 64 96 --base-width 8 --repeats 1 --warmup 1 --cfg-options model.train_cfg.rcnn.sampler.num=32)
        PROFILE=(--shape 2 3 64 96 --base-width 8 --steps 1 --warmup 1 --precision float32
            --cfg-options model.train_cfg.rcnn.sampler.num=32)
        DEMO_OPTS=(train_cfg.max_iters=2 train_cfg.val_interval=2 'param_scheduler=[]' train_dataloader.batch_size=2
            train_dataloader.num_workers=0 train_dataloader.persistent_workers=False val_dataloader.num_workers=0
            val_dataloader.persistent_workers=False test_dataloader.num_workers=0 test_dataloader.persistent_workers=False
            default_hooks.logger.interval=1 default_hooks.checkpoint.interval=2)
        COCO_DATA=("train_dataloader.dataset.data_root=$DATA/" "val_dataloader.dataset.data_root=$DATA/"
            "test_dataloader.dataset.data_root=$DATA/" "val_evaluator.ann_file=$DATA/annotations/instances_val.json"
            "test_evaluator.ann_file=$DATA/annotations/instances_val.json")
        VOC_DATA=("train_dataloader.dataset.data_root=$DATA/VOCdevkit/" "val_dataloader.dataset.data_root=$DATA/VOCdevkit/"
            "test_dataloader.dataset.data_root=$DATA/VOCdevkit/")
    else
        DEVICE=()
        AMP=(--amp)
        demo_train_limit=240 demo_test_limit=75 bench_limit=180 profile_limit=140
        DATA=data/demo  # the configs' own data_root: exactly the user's command
        BENCH=() PROFILE=(--trace-max-mib 12) DEMO_OPTS=() COCO_DATA=() VOC_DATA=()
    fi
    if part demos; then
        if [ ! -f "$DATA/annotations/instances_val.json" ]; then
            if [ "$DRY" = 1 ]; then GEN=(--num-train 8 --num-val 4 --size 96 96); else GEN=(); fi
            "$PY" tools/misc/make_demo_data.py --out "$DATA" "${GEN[@]}" > "$OUT/demo_data.log" 2>&1
        fi
        say "demos: tools/train.py${AMP[*]:+ ${AMP[*]}} (seed $SEED), then tools/test.py: COCO (Faster R-CNN + CBAM) and VOC (SSD + StairNet + CBAM) side by side"
        demo() {  # demo NAME CONFIG DATA-OPTIONS...: train then test in OUT/demo_NAME
            local name=$1 config=$2 w="$OUT/demo_$1" ckpt
            shift 2
            rm -rf "$w" && mkdir -p "$w"
            timed "$w" train $demo_train_limit "${DET[@]}" tools/train.py "$config" --work-dir "$w" "${AMP[@]}" \
                --cfg-options randomness.seed=$SEED "${DEMO_OPTS[@]}" "$@" || return 0
            ckpt="$w/$(basename "$(cat "$w/last_checkpoint")")"
            timed "$w" test $demo_test_limit "${DET[@]}" tools/test.py "$config" "$ckpt" --work-dir "$w" \
                --cfg-options randomness.seed=$SEED "${DEMO_OPTS[@]}" "$@" || return 0
        }
        demo coco configs/demo/faster-rcnn_r50w16-cbam_fpn_demo.py "${COCO_DATA[@]}" &
        coco_pid=$!
        demo voc configs/demo/stairnet_r18w16-cbam_demo_voc.py "${VOC_DATA[@]}" &
        voc_pid=$!
        wait $coco_pid $voc_pid
        for d in coco voc; do
            for what in train test; do
                if [ ! -f "$OUT/demo_$d/$what.json" ] || ! grep -q '"rc": 0,' "$OUT/demo_$d/$what.json"; then
                    rc_detector=1
                    say "demo $d: $what did not finish: $(cat "$OUT/demo_$d/$what.json" 2>/dev/null || echo 'not run'); last lines of its log:"
                    tail -5 "$OUT/demo_$d/$what.log" 2>/dev/null || true
                fi
            done
        done
        "$PY" tools/analysis/gpu_detector.py demos "${DEVICE[@]}" --run coco="$OUT/demo_coco" --run voc="$OUT/demo_voc" \
            --seed "$SEED" "${AMP[@]}" --out-dir "$OUT" > "$OUT/demos.log" 2>&1 || rc_detector=1
        tables+=("$OUT/demos.md")
    fi
    if part bench; then
        say "detector benchmark: Faster R-CNN training steps, plain / CBAM (auto, torch) / C4, float16 AMP, bfloat16, float32"
        timeout $bench_limit "${DET[@]}" tools/analysis/gpu_detector.py bench "${DEVICE[@]}" "${BENCH[@]}" --out-dir "$OUT" \
            > "$OUT/detector_bench.log" 2>&1 || { rc_detector=1; tail -5 "$OUT/detector_bench.log"; }
        tables+=("$OUT/detector_bench.md")
    fi
    if part profile; then
        say "detector profile: torch.profiler over detector and ResNet-50 steps"
        timeout $profile_limit "${DET[@]}" tools/analysis/gpu_detector.py profile "${DEVICE[@]}" "${PROFILE[@]}" --out-dir "$OUT" \
            > "$OUT/detector_profile.log" 2>&1 || { rc_detector=1; tail -5 "$OUT/detector_profile.log"; }
        tables+=("$OUT/detector_profile.md")
    fi
fi
say "done ($STEPS${DETECTOR_PARTS:+; detector: $DETECTOR_PARTS}): tests rc=$rc_tests, benchmark rc=$rc_bench, graph rc=$rc_graph, compiled rc=$rc_compiled, detector rc=$rc_detector; results in $OUT"
if [ -n "${PACK:-}" ]; then
    tar czf "$PACK" -C "$(dirname "$OUT")" --exclude='site' --exclude='site312' --exclude='demo_data' --exclude='*.pth' \
        --exclude='last_checkpoint' --exclude='requirements.tmp' "$(basename "$OUT")"
    say "packed $OUT into $PACK ($(du -k "$PACK" | cut -f1) KiB)"
fi
for t in "${tables[@]}"; do  # the detector step's tables, last
    echo
    if [ -f "$t" ]; then cat "$t"; else echo "(no $t: see its log)"; fi
done
exit $(( rc_tests || rc_bench || rc_graph || rc_detector ))
