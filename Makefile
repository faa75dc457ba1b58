# The README's commands. Each target sets up everything it needs on a fresh machine first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

# Environment every command runs under (see docs/training.md):
# albumentations would ask PyPI for updates on every import, timm must never reach a hub,
# and glibc's malloc page-faults large tensor buffers back in on every batch without these thresholds.
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export MALLOC_MMAP_THRESHOLD_ := 33554432
export MALLOC_TRIM_THRESHOLD_ := 4294967296

.PHONY: setup data test demo bench lint clean

# Real data that installs offline from Debian packages (the demo data sets).
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
MRI_TEMPLATES := /usr/share/mricron/templates/aal.nii.gz
# The aerial tree images ship inside this wheel; its own dependencies (a full training stack) are
# not needed because we only read its data files, never import it.
DEEPFOREST    := deepforest==2.1.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# pyproject.toml declares version ranges; constraints.txt holds the exact tested versions, so CI is reproducible.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

$(MRI_TEMPLATES):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq mricron-data

$(VENV)/.deepforest: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps "$(DEEPFOREST)"
	touch $@

data: $(FASHION_MNIST) $(MRI_TEMPLATES) $(VENV)/.deepforest

# Unit tests run one torch thread per process: two threads collapse when anything else loads the CPU.
test: setup data
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# The main job, on real data that installs offline, a few minutes per task on the CPU:
# the Fashion-MNIST classifier (test top-1), the DETR detector on scenes composed from
# Fashion-MNIST objects (COCO mAP) and the TransUNet segmenter on the MRI lobes (Dice, HD95).
# --overwrite: a second `make demo` replaces the previous demo runs instead of being refused.
demo: setup data
	$(PY) tasks/classify.py train --overwrite --config configs/classification/fashion_mnist_cpu.yaml train.output_dir=runs/fashion_mnist_demo
	$(PY) tasks/detect.py prepare scenes --output data/fashion_scenes
	$(PY) tasks/detect.py train --overwrite --config configs/detection/fashion_scenes_cpu.yaml train.output_dir=runs/fashion_scenes_demo
	$(PY) tasks/segment.py prepare --output data/mri_lobes
	$(PY) tasks/segment.py train --overwrite --config configs/segmentation/mri_lobes_cpu.yaml train.output_dir=runs/mri_lobes_demo

bench: setup data
	$(PY) benchmarks/backbone_vs_timm.py
	$(PY) benchmarks/classification_time_to_accuracy.py
	$(PY) benchmarks/detection_loss.py
	$(PY) benchmarks/detection.py
	$(PY) benchmarks/segmentation_metrics.py
	$(PY) benchmarks/segmentation.py

lint: setup
	$(PY) -m ruff check packages tasks tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
