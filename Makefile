# The README's commands. Each target sets up everything it needs on a fresh machine first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

# Environment every command runs under (see README, "Machine notes"):
# albumentations would ask PyPI for updates on every import, timm must never reach a hub,
# and glibc's malloc page-faults large tensor buffers back in on every batch without these thresholds.
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export MALLOC_MMAP_THRESHOLD_ := 33554432
export MALLOC_TRIM_THRESHOLD_ := 4294967296

.PHONY: setup test demo bench lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Unit tests run one torch thread per process: two threads collapse when anything else loads the CPU.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# Until the task issues train something, the demo is the backbone benchmark on a small budget.
demo: setup
	$(PY) benchmarks/backbone_vs_timm.py --quick

bench: setup
	$(PY) benchmarks/backbone_vs_timm.py

lint: setup
	$(PY) -m ruff check packages tasks tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
