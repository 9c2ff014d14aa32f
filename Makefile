# Two commands on a fresh machine with Python 3.11 and pip: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
# CLIP's real BPE vocabulary (OpenAI's, MIT), for the synthetic tokenizer files; without its
# dependencies, which would pull torchvision and another torch (a requirements file cannot say so).
CLIP_BPE_WHEEL := open_clip_torch==3.3.0
# Tests only: packages beyond the pins that diffusers imports when it finds them (peft imports
# transformers), kept out of the venv in a folder one test puts on a job's PYTHONPATH.
EXTRA_TEST_PACKAGES := peft==0.21.2 accelerate==1.16.0
EXTRA_TEST_DIR := tests/.extra-packages
# What checks a SHA256SUMS file: sha256sum, or where it is missing (macOS 14; /sbin/sha256sum
# ships from macOS 15) shasum -a 256, which reads the same lines.
SHA256_CHECK := $(shell command -v sha256sum >/dev/null 2>&1 && echo 'sha256sum -c' || echo 'shasum -a 256 -c')

.PHONY: demo test test-slurm slurm-packages bench bench-sd3.5 bench-sd3.5-large bench-sweep lint clean

# pip byte-compiles what it installs (half a minute for torch and the rest). Keep it: with
# PYTHONDONTWRITEBYTECODE set, as on the team's machines, nothing compiles later, and every
# job would compile torch from source at each import.
# Python 3.11 only: the pinned wheels (torch 2.13, coremltools 9.0) are for it. No fallback to
# another python3, and a .venv of another version is made again, not reused. An x86_64 Python
# on a Mac (Intel, or Rosetta) cannot install torch 2.13: INSTALL_CHECK refuses it before pip.
IS_PY311 := -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'
INSTALL_CHECK := src/sd3coreml/install_check.py
$(STAMP): requirements.txt pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 && $(PYTHON) $(IS_PY311) || { echo "error: $(PYTHON) is not Python 3.11;" \
		"install it (python.org, or Homebrew's python@3.11) or name one: make PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) $(INSTALL_CHECK)
	@if [ -x $(BIN)/python ] && ! { $(BIN)/python $(IS_PY311) && $(BIN)/python $(INSTALL_CHECK) 2>/dev/null; }; then \
		echo "$(VENV) is not a Python 3.11 that can install the pins: making it again"; rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps $(CLIP_BPE_WHEEL)
	$(BIN)/pip install --quiet --no-deps --upgrade --target $(EXTRA_TEST_DIR) $(EXTRA_TEST_PACKAGES)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The demo's jobs run in a warm job server (src/sd3coreml/job_server.py) that has torch and its kin
# imported: each job skips 3-5 s of imports, the outputs are the same bytes. Its jobs have one
# thread each (--job-threads). Never for `make bench`: a served job's benchmark file measures
# only its client process.
demo: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m sd3coreml.job_server --job-threads 1 -- \
		$(BIN)/snakemake --configfile config/demo.yaml -c$(CORES) coremlsd3_4step_packages coremlsd3_2step_packages
	cd results/demo/coremlsd3_4step_packages && $(SHA256_CHECK) --quiet SHA256SUMS
	cd results/demo/coremlsd3_2step_packages && $(SHA256_CHECK) --quiet SHA256SUMS
	$(BIN)/python -m sd3coreml verify-folder results/demo/coremlsd3_4step_packages results/demo/coremlsd3_2step_packages
	@echo "demo folders: results/demo/coremlsd3_4step_packages results/demo/coremlsd3_2step_packages"

test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q --durations=20 -n $(CORES)

# The demo's packages folders through profiles/slurm on a one-node Slurm cluster with accounting
# that the test starts in a temporary folder and stops (tests/cluster/), checked against a
# local build's SHA256SUMS. Linux, as root: it installs Debian's packages if they are missing.
SLURM_DEBS := slurmctld slurmd slurmdbd slurm-client munge mariadb-server
slurm-packages:
	@[ "$$(uname)" = Linux ] && [ "$$(id -u)" = 0 ] || { echo "error: make test-slurm starts Slurm's daemons: it needs Linux and root" >&2; exit 1; }
	@dpkg -s $(SLURM_DEBS) >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SLURM_DEBS); }

test-slurm: $(STAMP) slurm-packages
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -rP -m slurm tests/cluster

# Full scale: the synthetic sd3-medium checkpoint first (it stands in for a download and is
# not timed), then coremlsd3_4step_packages from nothing with -c2, timed; then the report
# (docs/PERFORMANCE.md) and the full-scale contract test.
BENCH := results/bench
BENCH_BUILD := snakemake --workflow-profile profiles/full-scale --configfile config/bench.yaml -c2 coremlsd3_4step_packages
bench: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --configfile config/bench.yaml -c2 \
		$(BENCH)/checkpoints/sd3-medium-seed4.safetensors $(BENCH)/checkpoints/sd3-medium-components-seed0
	find $(BENCH) -mindepth 1 -maxdepth 1 ! -name checkpoints -exec rm -rf {} +
	rm -rf $(BENCH)/benchmarks
	start=$$(date +%s); PATH=$(abspath $(BIN)):$$PATH $(BIN)/$(BENCH_BUILD) && \
		wall=$$(( $$(date +%s) - start )) && \
		$(BIN)/python -m sd3coreml bench-report --root $(BENCH) --folder $(BENCH)/coremlsd3_4step_packages \
			--wall $$wall --command "make bench ($(BENCH_BUILD))" \
			--notes docs/performance-notes.md --out docs/PERFORMANCE.md
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -m slow

# The sweep config/bench.yaml names (config/sweeps.yaml: sd3-medium-measured) over the bench
# checkpoint, sharing the bench build's stages; docs/performance-notes.md quotes its table.
# SD3.5 Medium at full scale (config/bench-sd3.5.yaml): its synthetic checkpoint first (not
# timed), then its packages folder, timed, sharing the text encoders and VAE with `make bench`
# (built here if that has not run), then its full-scale contract and fidelity checks.
BENCH_SD35_BUILD := snakemake --workflow-profile profiles/full-scale --configfile config/bench-sd3.5.yaml -c2 coremlsd3_sd35_medium_packages
bench-sd3.5: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --configfile config/bench-sd3.5.yaml -c2 \
		$(BENCH)/checkpoints/sd3.5-medium-seed4.safetensors $(BENCH)/checkpoints/sd3-medium-components-seed0
	start=$$(date +%s); PATH=$(abspath $(BIN)):$$PATH $(BIN)/$(BENCH_SD35_BUILD) && \
		echo "bench-sd3.5: $(BENCH_SD35_BUILD): $$(( $$(date +%s) - start )) s wall"
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -m slow_sd35

# SD3.5 Large (config/bench-sd3.5-large.yaml): a full build does not fit 24 GB, so one block
# range at full width: its synthetic checkpoint first (16 GB, not timed), then blocks 0-2
# converted, compressed to int8 and checked against diffusers, timed.
SD35_LARGE_RANGE := $(BENCH)/fidelity/mmdit/sd35_large/iOS18/latent64x64/blocks0-2.int8_linear_symmetric_per_channel.json
BENCH_SD35_LARGE_BUILD := snakemake --workflow-profile profiles/full-scale --configfile config/bench-sd3.5-large.yaml -c2 $(SD35_LARGE_RANGE)
bench-sd3.5-large: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --configfile config/bench-sd3.5-large.yaml -c2 \
		$(BENCH)/checkpoints/sd3.5-large-seed4.safetensors
	start=$$(date +%s); PATH=$(abspath $(BIN)):$$PATH $(BIN)/$(BENCH_SD35_LARGE_BUILD) && \
		echo "bench-sd3.5-large: $(BENCH_SD35_LARGE_BUILD): $$(( $$(date +%s) - start )) s wall"
	@echo "measurement (PSNR per output, fp16 and int8): $(SD35_LARGE_RANGE)"

bench-sweep: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --configfile config/bench.yaml -c2 sweep
	cat $(BENCH)/reports/sweep/summary.md

lint: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint --configfile config/demo.yaml

clean:
	rm -rf results .snakemake
