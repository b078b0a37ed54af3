# Two commands for users: `make demo` and `make test`. Both set themselves up first.
SHELL := /bin/bash
PY := .venv/bin/python
export VLLM_CPU_KVCACHE_SPACE ?= 4
PYTEST_ARGS ?=

.PHONY: setup setup-serve setup-train default-model test test-fast demo study clean-envs

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

# The main job on the embedded SmolLM2: 2 macro-iterations on a few instructions, then the base model and the
# final Generator answer the shipped LonGen-style sample and are scored, and the final Generator answers the
# held-out instructions (the report's table and growth.png then run from the base model to it).
DEMO_ITER ?= 2
DEMO_ARGS ?= --instruct_count=10 --max_iter=$(DEMO_ITER)
# The final Generator on the held-out instructions, at cpu-demo's step1 sizes (as each iteration's Generator was).
DEMO_HELDOUT_ARGS ?= --count=16 --max_tokens=800 --workers=32 --no-drop_short
demo: setup
	cd llama && bash run.sh --base_model=default --profile=cpu-demo $(DEMO_ARGS)
	cd llama && bash run_server.sh --base_model=default --iter=$(DEMO_ITER) && \
	  { ../.venv/bin/python ../eval/compare_models.py ../eval/data/longen_sample.jsonl --models base,gen_sft \
	      --outdir results/eval --max_tokens 1500 && \
	    ../.venv/bin/python heldout_generator.py --iter=$$(($(DEMO_ITER) + 1)) $(DEMO_HELDOUT_ARGS) && \
	    ../.venv/bin/python -m self_lengthen.report results; rc=$$?; bash stop_server.sh; exit $$rc; }
	@echo "report: llama/results/report.md (growth plot: llama/results/growth.png)"

# The study (issue 14): does the Generator lengthen? 3 iterations on the embedded SmolLM2 with room to grow
# (profile `study`), in llama/study, resumable: run it again after a stop and it continues. About 2.5 h on 2 cores.
STUDY_ITER ?= 3
STUDY_ARGS ?= --instruct_count=16 --max_iter=$(STUDY_ITER)
STUDY_HELDOUT_ARGS ?= --max_tokens=2048 --workers=32 --no-drop_short
study: setup
	cd llama && bash run.sh --base_model=default --profile=study --workdir=study $(STUDY_ARGS)
	cd llama && bash run_server.sh --base_model=default --iter=$(STUDY_ITER) --workdir=study && \
	  { ../.venv/bin/python heldout_generator.py --iter=$$(($(STUDY_ITER) + 1)) --workdir=study $(STUDY_HELDOUT_ARGS) && \
	    ../.venv/bin/python ../eval/compare_models.py ../eval/data/longen_sample.jsonl --models base,gen_sft \
	      --outdir study/results/eval --max_tokens 3000 && \
	    ../.venv/bin/python -m self_lengthen.report study/results; rc=$$?; bash stop_server.sh --workdir=study; exit $$rc; }
	@echo "report: llama/study/results/report.md (growth plot: llama/study/results/growth.png)"

clean-envs:
	rm -rf .venv .venv-train
