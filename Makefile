# One-command entry points; each one does all set-up first (idempotent, fast when done).
#   make demo        set up, generate demo data, train + test the CBAM Faster R-CNN on CPU, print COCO mAP
#   make test        set up, run the default (fast) test suite
#   make demo-voc    the same for the VOC pipeline: SSD + StairNet + CBAM, VOC2007 mAP
#   make demo-compare  train the CBAM demo and its baseline, print both mAPs, draw them side by side
#   make test-slow   the slow tests too (multi-process CPU training, longer runs, mmdeploy conversions)
#   make deploy-env  .venv/deploy: the upstream stack + mmdeploy 1.3.1 (requirements/deploy.txt), for
#                    tools/deploy/ort_check.py; never touches the test environments
# STACK=onedl (default: maintained OneDL line, torch 2.13) or STACK=upstream (mmdet 3.3.0, torch 2.5.1);
# each stack gets its own virtual environment, .venv/$(STACK) unless VENV says otherwise.
STACK ?= onedl
VENV ?= $(CURDIR)/.venv/$(STACK)
PY := $(VENV)/bin/python
export STACK VENV

.PHONY: setup test test-slow deploy-env demo demo-voc demo-compare clean-demo
setup:
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

test-slow: setup deploy-env
	$(PY) -m pytest -q -m slow tests

DEPLOY_VENV := $(CURDIR)/.venv/deploy
deploy-env:
	STACK=upstream VENV=$(DEPLOY_VENV) bash tools/setup_env.sh
	$(DEPLOY_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements/deploy.txt
	@# the test requirements' onnxscript and its onnx-ir (for torch's dynamo exporter) need onnx >= 1.16/1.17;
	@# mmdeploy's onnx 1.14.1 replaced it, and nothing in this environment exports with dynamo: remove them,
	@# then prove the set
	$(DEPLOY_VENV)/bin/python -m pip uninstall -q -y onnxscript onnx-ir
	$(DEPLOY_VENV)/bin/python -m pip check

demo: setup
	PY=$(PY) bash tools/run_demo.sh

demo-voc: setup
	PY=$(PY) CONFIG=configs/demo/stairnet_r18w16-cbam_demo_voc.py WORK=work_dirs/demo_voc bash tools/run_demo.sh

demo-compare: setup
	PY=$(PY) bash tools/run_demo_compare.sh

clean-demo:
	rm -rf data/demo work_dirs/demo work_dirs/demo_baseline work_dirs/demo_compare
