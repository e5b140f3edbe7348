# One command sets up and runs the demo; one sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints.txt

.PHONY: demo provision test test-slow lint bench-ingest bench-quality bench-architectures \
	bench-large-volume bench-plan-memory bench-slurm-throughput clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/medseg demo --out demo_output

# The services the tests start (PostgreSQL server, Orthanc + DICOMweb plugin): installed with
# apt-get as root or through sudo, else it stops with the command to run. Checks only when present.
provision:
	bash .ci/provision.sh

test: provision $(VENV)/.installed-dev
	$(BIN)/pytest -n 2

# One at a time: the full demo's goal (Dice >= 0.9 in under 10 minutes, training capped at 4)
# is measured with the cores to itself, not beside the ONNX exports.
test-slow: provision $(VENV)/.installed-dev
	$(BIN)/pytest -n 0 -m slow

# mypy reads its settings (files = medseg, the pydantic plugin) from pyproject.toml.
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench-ingest: $(VENV)/.installed-dev
	$(BIN)/python bench/ingest.py

bench-quality: $(VENV)/.installed-dev
	$(BIN)/python bench/quality_hippocampus.py --minutes 30

bench-architectures: $(VENV)/.installed-dev
	$(BIN)/python bench/architectures.py --minutes 6

# Full-size CT (512 x 512 x 400) with 16 and 118 classes: medseg vs the MONAI path (time, memory).
bench-large-volume: $(VENV)/.installed-dev
	$(BIN)/python bench/large_volume.py --classes 4 16 118 --backends torch openvino --monai-batch 1 2 4

# plan + preprocess of 50 full-size CTs: peak memory of each command's process tree.
bench-plan-memory: $(VENV)/.installed-dev
	$(BIN)/python bench/plan_memory.py --cases 50

# Scans per hour of the Slurm test's 24 phantoms: 1 and 2 workers, 2 array tasks on the test
# cluster (the services make test-slow provisions).
bench-slurm-throughput: provision $(VENV)/.installed-dev
	$(BIN)/python bench/slurm_throughput.py --repeats 2

# nnU-Net v2 lives in its own venv (bench/.venv, gitignored) so it never touches .venv. torch is
# installed first and pinned again beside nnunetv2 so pip keeps the CPU build; constraints.txt
# keeps medseg's pins. nnU-Net needs no network at run time (the script points nnUNet_raw,
# nnUNet_preprocessed and nnUNet_results at a temp folder).
BENCH_VENV := bench/.venv
BENCH_BIN := $(BENCH_VENV)/bin

$(BENCH_VENV)/.installed: pyproject.toml $(CONSTRAINTS) bench/requirements-nnunet.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/pip install --quiet --upgrade pip
	$(BENCH_BIN)/pip install --quiet torch==2.13.0
	$(BENCH_BIN)/pip install --quiet -c $(CONSTRAINTS) -e .
	$(BENCH_BIN)/pip install --quiet -c $(CONSTRAINTS) -r bench/requirements-nnunet.txt
	$(BENCH_BIN)/python -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
	touch $@

.PHONY: bench-preprocess
bench-preprocess: $(BENCH_VENV)/.installed
	$(BENCH_BIN)/python bench/preprocess.py

# nnU-Net v2 against medseg on MSD hippocampus, same cases and wall-clock budgets, scored on the
# manifest's test split (bench/quality_vs_nnunet.py). Run it on an idle machine: each budget
# trains every row in turn. More options through BENCH_ARGS, e.g. a quick check:
#   make bench-vs-nnunet MINUTES=2 BENCH_ARGS="--test-cases 8 --work bench/_work/vs_nnunet_check \
#     --auto-folds 2 --auto-fold-minutes 0.25"
MINUTES ?= 30 60
BENCH_ARGS ?=
.PHONY: bench-vs-nnunet
bench-vs-nnunet: $(BENCH_VENV)/.installed
	$(BENCH_BIN)/python bench/quality_vs_nnunet.py --minutes $(MINUTES) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo_output
