#!/usr/bin/env bash
# CPU demo: generate the synthetic data if missing, train a demo config with tools/train.py,
# evaluate it with tools/test.py, print its mAP@0.5 (COCO bbox metric, or VOC metric for
# CONFIG=configs/demo/stairnet_r18w16-cbam_demo_voc.py). Fails if mAP@0.5 < MIN_MAP50 (0.5).
# Then (VIS=1, default) draws detections, Grad-CAM and the applied attention for four
# validation images with tools/analysis/vis_attention.py into $WORK/vis.
# SEED=N: train with randomness.seed=N (default: the config's, i.e. mmengine draws one); the GPU
# demos of tools/analysis/gpu_check.sh train with SEED=0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/${STACK:-onedl}/bin/python}
CONFIG=${CONFIG:-configs/demo/faster-rcnn_r50w16-cbam_fpn_demo.py}
WORK=${WORK:-work_dirs/demo}
MIN_MAP50=${MIN_MAP50:-0.5}
SEED_OPT=()
if [[ -n "${SEED:-}" ]]; then SEED_OPT=(--cfg-options "randomness.seed=$SEED"); fi

if [[ ! -f data/demo/annotations/instances_val.json ]]; then
    "$PY" tools/misc/make_demo_data.py --out data/demo
fi
start=$(date +%s)
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK" "${SEED_OPT[@]}"
trained=$(date +%s)
CKPT="$WORK/$(cat "$WORK/last_checkpoint" | xargs basename)"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK" --out "$WORK/val_predictions.pkl" | tee "$WORK/test_output.txt"
end=$(date +%s)
"$PY" - "$WORK/test_output.txt" "$MIN_MAP50" "$((trained - start))" "$((end - start))" <<'PYEOF'
import json, sys
path, min_map50, t_train, t_all = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
line = [l for l in open(path) if l.startswith('cbam_det metrics: ')][-1]
m = json.loads(line[len('cbam_det metrics: '):])
if 'coco/bbox_mAP_50' in m:
    map50 = m['coco/bbox_mAP_50']
    text = f"COCO bbox mAP@[.5:.95] = {m['coco/bbox_mAP']:.3f}   bbox mAP@0.5 = {map50:.3f}"
else:
    map50 = m['pascal_voc/mAP']
    text = f"VOC2007 (11-point) mAP@0.5 = {map50:.3f}"
print(f"\nDEMO RESULT  {text}   (train {t_train} s, train+test {t_all} s)")
if map50 < min_map50:
    sys.exit(f'demo: mAP@0.5 {map50:.3f} is below the target {min_map50}')
PYEOF
if [[ "${VIS:-1}" == 1 ]]; then
    "$PY" tools/analysis/vis_attention.py "$CONFIG" "$CKPT" data/demo/VOCdevkit/VOC2007/JPEGImages/val_0000{0,1,2,3}.jpg \
        --out-dir "$WORK/vis" > "$WORK/vis.log"
    echo "DEMO FIGURES (detections, Grad-CAM, attention per stage): $(grep '\.png$' "$WORK/vis.log" | tr '\n' ' ')"
fi
