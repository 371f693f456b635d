# ssm_lab: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
ARGS ?=
SCALE ?= smoke
FIG ?=
LAUNCHER ?= basic
RESULTS_DIR ?= results

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

# the torch wanted, kept in the venv: a change of TORCH_SPEC or TORCH_INDEX reinstalls
$(VENV)/.torch: FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH_SPEC) $(TORCH_INDEX)' | cmp -s - $@ || echo '$(TORCH_SPEC) $(TORCH_INDEX)' > $@

$(BIN)/.installed: pyproject.toml $(VENV)/.torch
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))   # first and pinned
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed ## create .venv and install (torch: TORCH_SPEC, from TORCH_INDEX if set)

run: install ## train the default experiment on CPU and print its record (ARGS="model=... data=..." to change it)
	$(BIN)/python run_experiment.py $(ARGS)

test: install ## run the test suite
	$(BIN)/python -m pytest $(ARGS)

lint: install ## ruff check
	$(BIN)/ruff check .

bench-overhead: install ## Lightning step time vs a bare PyTorch loop (benchmarks/results/)
	$(BIN)/python -m ssm_lab.bench.overhead

plot: install ## learning curves of the runs in results/ (ARGS="--filter choices.model=lru")
	$(BIN)/python plot_results.py $(ARGS)

figures: install ## run what the paper figures still need and draw them into $(RESULTS_DIR)/figures/<scale> (SCALE=smoke|small|paper FIG=a5_min_depth LAUNCHER=slurm)
	$(BIN)/python -m experiments --scale $(SCALE) $(if $(FIG),--figure $(FIG)) --launcher $(LAUNCHER) --results-dir $(RESULTS_DIR) $(ARGS)

clean: ## remove caches (never results/ or data_dir/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info

.PHONY: help install run test lint bench-overhead plot figures clean FORCE
