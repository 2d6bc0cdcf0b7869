# One-command entry points; each one does all set-up first (idempotent, fast when done).
#   make demo    set up, generate demo data, train + test the CBAM Faster R-CNN on CPU, print COCO mAP
#   make test    set up, run the default (fast) test suite
#   make test-slow   the slow tests too (multi-process CPU training, longer runs)
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup test test-slow demo clean-demo
setup:
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

test-slow: setup
	$(PY) -m pytest -q -m slow tests

demo: setup
	PY=$(PY) bash tools/run_demo.sh

clean-demo:
	rm -rf data/demo work_dirs/demo
