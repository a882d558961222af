# `make test` and `make demo` work from a fresh clone: the first call builds .venv
# from requirements.txt (torch, torchvision, DALI, ...) and installs this
# repository's library (hyperiqa, pipelines) into it, editable; later calls reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-quick test-gpu lint format demo bench clean-venv

venv: $(STAMP)

# Reinstall when requirements.txt or pyproject.toml changes; the stamp marks a complete install,
# so an interrupted one is redone rather than trusted.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The quick lane while working: everything but the end-to-end runs (marked slow).
test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# A gpu-marked test that skips (no CUDA, no DALI) counts as a failure here.
test-gpu: $(STAMP)
	HYPERIQA_GPU_STRICT=1 $(PY) -m pytest -q -m gpu

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# A small synthetic dataset, a few epochs of HyperIQA on whatever device is here.
demo: $(STAMP)
	$(PY) train.py --demo --overwrite

bench: $(STAMP)
	$(PY) bench/throughput.py --quick

clean-venv:
	rm -rf $(VENV)
