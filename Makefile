# Two commands do all the set-up:  `make demo`  and  `make test`.
# Both create .venv (python3 -m venv + pip install -e '.[test,ray]') when it is missing or stale.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench notebooks-strip clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,ray]'
	touch $(STAMP)

## the main job: synthetic data -> stage 1 -> stage 2 -> evaluation, on CPU or GPU
demo: $(STAMP)
	$(PY) -m workbench demo $(ARGS)

## the whole test suite (notebook and browser tests included), in TEST_JOBS worker processes
## (pytest-xdist, one thread each; TEST_JOBS=0 runs it in this process)
TEST_JOBS ?= 2
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_JOBS) --dist load $(ARGS)

## unit tests only
test-fast: $(STAMP)
	$(PY) -m pytest -m "not notebooks and not browser and not slow and not faults" $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/evaluation.py
	$(PY) benchmarks/losses.py
	$(PY) benchmarks/backbones.py
	$(PY) benchmarks/training.py
	$(PY) benchmarks/threads.py
	$(PY) benchmarks/methods.py

## clear outputs, execution counts and run metadata (papermill, widgets, timings) from the notebooks
## before committing; cell ids and tags are kept. The same options as .pre-commit-config.yaml.
NBSTRIPOUT_KEYS := metadata.papermill metadata.execution cell.metadata.papermill \
	metadata.language_info.codemirror_mode metadata.language_info.file_extension \
	metadata.language_info.mimetype metadata.language_info.nbconvert_exporter \
	metadata.language_info.pygments_lexer metadata.language_info.version
notebooks-strip: $(STAMP)
	$(VENV)/bin/nbstripout --keep-id --extra-keys "$(NBSTRIPOUT_KEYS)" notebooks/*.ipynb

clean-venv:
	rm -rf $(VENV)
