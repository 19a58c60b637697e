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
	$(PY) -m pip install --quiet --no-compile --disable-pip-version-check -e '.[test,bench]'
	# Byte-compile the dependencies once, in parallel (~15 s here; their own test suites skipped):
	# where PYTHONDONTWRITEBYTECODE is set, as on our machines, nothing is ever cached at import,
	# and every Python process (each test worker and entrypoint subprocess) would recompile jax,
	# scipy and matplotlib: ~11 s to import projects.pate_asr.sweep instead of ~4 s. A file that
	# cannot be compiled (none today) is only compiled at import instead, so its error does not
	# stop the install.
	$(PY) -m compileall -q -j 0 -x '/tests?/' $(VENV)/lib > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m projects.pate_asr.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=10

# Everything but the end-to-end runs (marked `slow`): a quick check while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow"

bench: $(STAMP)
	set -e; for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) workdirs
