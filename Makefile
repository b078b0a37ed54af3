# Two commands for users: `make demo` and `make test`. Both set themselves up first.
SHELL := /bin/bash
PY := .venv/bin/python
export VLLM_CPU_KVCACHE_SPACE ?= 4
PYTEST_ARGS ?=

.PHONY: setup setup-serve setup-train default-model test test-fast demo clean-envs

setup: setup-serve setup-train default-model

setup-serve:
	@bash scripts/setup_env.sh serve

setup-train:
	@bash scripts/setup_env.sh train

# Converts the embedded SmolLM2 once per machine (cached under SELF_LENGTHEN_HOME).
default-model: setup-serve
	@$(PY) -m self_lengthen.default_model >/dev/null

# The whole suite, slow tests (real vLLM, FastChat, LLaMA-Factory) included.
test: setup
	$(PY) -m pytest -v -rs $(PYTEST_ARGS) tests

# Only the tests that need no served model or training run.
test-fast: setup-serve
	$(PY) -m pytest -v -m "not slow" $(PYTEST_ARGS) tests

demo: setup
	cd llama && bash run.sh --base_model=default --profile=cpu-demo

clean-envs:
	rm -rf .venv .venv-train
