# Two commands for users: `make demo` and `make test`. Both set themselves up first.
SHELL := /bin/bash
PY := .venv/bin/python
export VLLM_CPU_KVCACHE_SPACE ?= 4
PYTEST_ARGS ?=

.PHONY: setup setup-system setup-serve setup-train default-model test test-fast demo study clean-envs

setup: setup-system setup-serve setup-train default-model

# tcmalloc for CPU serving and training, where apt-get may install it (scripts/setup_system.sh says what it does).
setup-system:
	@bash scripts/setup_system.sh

setup-serve:
	@bash scripts/setup_env.sh serve

setup-train:
	@bash scripts/setup_env.sh train

# Converts the embedded SmolLM2 once per machine (cached under SELF_LENGTHEN_HOME).
default-model: setup-serve
	@$(PY) -m self_lengthen.default_model >/dev/null

# The whole suite, slow tests (real vLLM, FastChat, LLaMA-Factory) included; the 30 slowest are listed (CI has 90 min).
test: setup
	$(PY) -m pytest -v -rs --durations=30 $(PYTEST_ARGS) tests

# Only the tests that need no served model or training run.
test-fast: setup-serve
	$(PY) -m pytest -v -m "not slow" $(PYTEST_ARGS) tests

# After a run in llama/$(1) (a workdir; . for llama itself) of $(2) iterations: serve the final adapters; the final
# Generator answers the held-out instructions and the LonGen-style sample ($(3): the run's step1 sizes), recorded as
# iteration $(2) + 1 (iteration 1's row is the base model); the report is made again with it.
define final_evaluation
cd llama && bash run_server.sh --base_model=default --iter=$(2) --workdir=$(1) && \
  { ../.venv/bin/python heldout_generator.py --iter=$$(($(2) + 1)) --workdir=$(1) $(3) && \
    ../.venv/bin/python -m self_lengthen.report $(1)/results; rc=$$?; bash stop_server.sh --workdir=$(1); exit $$rc; }
@echo "report: llama/$(patsubst ./%,%,$(1)/results)/report.md (growth plot: llama/$(patsubst ./%,%,$(1)/results)/growth.png)"
endef

# The main job on the embedded SmolLM2: 2 macro-iterations on a few instructions, then the final evaluation above.
# 12 instructions: at the base model's usual share of kept extensions (about a third), 10 gave 8-16 rows in
# iteration 1 (16 once in seven runs), short of issue 13's 16; 12 gave 20, 18 and 13 (runs U-W,
# bench/RESULTS.md, 2026-12-04). 14 gave 12 then 19 rows, its iteration 2 taking 14.5 of issue 13's 15 min
# (run AO, 2026-12-06).
DEMO_ITER ?= 2
DEMO_ARGS ?= --instruct_count=12 --max_iter=$(DEMO_ITER)
# The profile: a shipped name or a YAML file of the same shape (run.sh's --profile).
DEMO_PROFILE ?= cpu-demo
# The final Generator on the held-out instructions, at cpu-demo's step1 sizes (as each iteration's Generator was).
DEMO_HELDOUT_ARGS ?= --count=16 --max_tokens=800 --workers=32 --no-drop_short
demo: setup
	cd llama && bash run.sh --base_model=default --profile=$(DEMO_PROFILE) $(DEMO_ARGS)
	$(call final_evaluation,.,$(DEMO_ITER),$(DEMO_HELDOUT_ARGS))

# The study (issue 14): does the Generator lengthen? 3 iterations on the embedded SmolLM2 with room to grow
# (profile `study`), in llama/study, resumable: run it again after a stop and it continues. About 1 h 50 min on
# 2 cores with the machine to itself while adapters were served as bfloat16 copies (2026-12-01, 10 epochs); about
# 3 h 40 min with float32 copies (2026-12-02, run in two pieces; bench/RESULTS.md). On stochastically rounded
# bfloat16 copies (2026-12-02, midday): 52 min for iteration 1, 49 for iteration 2's synthesis (about 3 h at that pace).
STUDY_ITER ?= 3
STUDY_ARGS ?= --instruct_count=16 --max_iter=$(STUDY_ITER)
STUDY_HELDOUT_ARGS ?= --max_tokens=2048 --workers=32 --no-drop_short
study: setup
	cd llama && bash run.sh --base_model=default --profile=study --workdir=study $(STUDY_ARGS)
	$(call final_evaluation,study,$(STUDY_ITER),$(STUDY_HELDOUT_ARGS))

clean-envs:
	rm -rf .venv .venv-train
