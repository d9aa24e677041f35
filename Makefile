# Two commands do all the set-up:  `make demo`  and  `make test`.
# Both create .venv (python3 -m venv + pip install -e '.[test]') when it is missing or stale.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench notebooks-strip clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## the main job: synthetic data -> stage 1 -> stage 2 -> evaluation, on CPU or GPU
demo: $(STAMP)
	$(PY) -m workbench demo $(ARGS)

## the whole test suite (notebook and browser tests included)
test: $(STAMP)
	$(PY) -m pytest $(ARGS)

## unit tests only
test-fast: $(STAMP)
	$(PY) -m pytest -m "not notebooks and not browser and not slow" $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/evaluation.py
	$(PY) benchmarks/losses.py
	$(PY) benchmarks/backbones.py

## clear outputs and execution counts from the notebooks before committing
notebooks-strip: $(STAMP)
	$(PY) -m workbench.experiments strip notebooks/*.ipynb

clean-venv:
	rm -rf $(VENV)
