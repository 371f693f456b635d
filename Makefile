# ssm_lab: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
SCALE ?= smoke
FIG ?=
LAUNCHER ?= basic
RESULTS_DIR ?= results

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"   # first and pinned: a bare torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed ## create .venv and install ssm_lab (torch pinned by TORCH_SPEC)

run: install ## train the default experiment on CPU and print its record (ARGS="model=... data=..." to change it)
	$(BIN)/python run_experiment.py $(ARGS)

test: install ## run the test suite
	$(BIN)/python -m pytest $(ARGS)

lint: install ## ruff check
	$(BIN)/ruff check .

bench-overhead: install ## Lightning step time vs a bare PyTorch loop (benchmarks/results/)
	$(BIN)/python -m ssm_lab.bench.overhead

plot: install ## learning curves of the runs in results/ (ARGS="--filter model=lru")
	$(BIN)/python plot_results.py $(ARGS)

figures: install ## run what the paper figures still need and draw them into $(RESULTS_DIR)/figures (SCALE=smoke|small|paper FIG=a5_min_depth LAUNCHER=slurm)
	$(BIN)/python -m experiments --scale $(SCALE) $(if $(FIG),--figure $(FIG)) --launcher $(LAUNCHER) --results-dir $(RESULTS_DIR) $(ARGS)

clean: ## remove caches (never results/ or data_dir/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info

.PHONY: help install run test lint bench-overhead plot figures clean
