#!/usr/bin/env bash
# Attention added to a trained detector (docs/modules.md, "Adding attention to a trained detector"):
# train the plain CPU demo detector, then compare, from its checkpoint,
#   (a) the plain detector trained on,
#   (b) CBAM added with the paper's initialisation,
#   (c) CBAM added with init_mode='identity',
# each evaluated (COCO bbox mAP, mAP@0.5) at step 0 and after 100, 200, 300 and 400 iterations.
# Prints one table (markdown) at the end; WORK (default work_dirs/insertion) keeps every run.
#
#   PY=.venv/onedl/bin/python bash tools/misc/insertion_experiment.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/${STACK:-onedl}/bin/python}
WORK=${WORK:-work_dirs/insertion}
BASE=${BASE:-work_dirs/demo_baseline}
mkdir -p "$WORK"

if [[ ! -f data/demo/annotations/instances_val.json ]]; then
    "$PY" tools/misc/make_demo_data.py --out data/demo
fi
if [[ ! -f "$BASE/iter_800.pth" ]]; then
    "$PY" tools/train.py configs/demo/faster-rcnn_r50w16_fpn_demo.py --work-dir "$BASE"
fi
for v in faster-rcnn_r50w16_fpn_demo-ft faster-rcnn_r50w16-cbam_fpn_demo-ft faster-rcnn_r50w16-cbam-identity_fpn_demo-ft; do
    cfg="configs/demo/$v.py"
    # step 0: the plain checkpoint in the variant's model (attention at its initialisation)
    "$PY" tools/test.py "$cfg" "$BASE/iter_800.pth" --work-dir "$WORK/$v-step0" --unsafe-load \
        | grep '^cbam_det metrics: ' > "$WORK/$v-step0.json"
    "$PY" tools/train.py "$cfg" --work-dir "$WORK/$v" --unsafe-load --cfg-options load_from="$BASE/iter_800.pth"
done
"$PY" - "$WORK" <<'EOF'
import glob, json, os, sys

work = sys.argv[1]
rows = [('(a) plain, trained on', 'faster-rcnn_r50w16_fpn_demo-ft'),
        ("(b) + CBAM, paper's init", 'faster-rcnn_r50w16-cbam_fpn_demo-ft'),
        ("(c) + CBAM, init_mode='identity'", 'faster-rcnn_r50w16-cbam-identity_fpn_demo-ft')]
print('| detector | step 0 | K = 100 | K = 200 | K = 300 | K = 400 |')
print('|---|---|---|---|---|---|')
for name, v in rows:
    step0 = json.loads(open(os.path.join(work, f'{v}-step0.json')).read().split(': ', 1)[1])
    cells = [(step0['coco/bbox_mAP'], step0['coco/bbox_mAP_50'])]
    scalars = sorted(glob.glob(os.path.join(work, v, '*', 'vis_data', 'scalars.json')))[-1]
    vals = [r for r in map(json.loads, open(scalars)) if 'coco/bbox_mAP' in r]  # after 100, 200, 300, 400
    assert len(vals) == 4, f'{v}: {len(vals)} evaluations in {scalars}, expected 4'
    cells += [(r['coco/bbox_mAP'], r['coco/bbox_mAP_50']) for r in vals]
    print(f'| {name} | ' + ' | '.join(f'{m:.3f} / {m50:.3f}' for m, m50 in cells) + ' |')
EOF
