# Two commands on a fresh clone: `make run` (main job on the embedded corpus) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= workdirs/pate_quick
CONFIG ?= projects/pate_asr/configs/sweep.py:quick

.PHONY: install run test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# --no-compile: modules are byte-compiled on first import instead (saves ~25 s here).
	$(PY) -m pip install --quiet --no-compile --disable-pip-version-check -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m projects.pate_asr.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=10

# Everything but the end-to-end runs (marked `slow`): a quick check while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

bench: $(STAMP)
	set -e; for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) workdirs
