# Everything installs into .venv once; later runs reuse it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench venv clean

$(STAMP): setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# Two workers, one test file each at a time (module fixtures are built once): most tests
# wait on Python and TensorFlow start-up more than on the two cores.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# The demo trains on the CPU even where a GPU is visible (it is sized for two cores).
demo: $(STAMP)
	CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m retinanet.apps.demo

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf $(VENV) runs
