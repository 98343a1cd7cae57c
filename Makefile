# The two Quick start commands are `make demo` and `make test`; each sets up what it needs.
PY := .venv/bin/python

.PHONY: setup demo test test-fast test-quick bench paper clean fuzz caffe-variants
setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) demo.py

# Both Caffe variants: the other one builds in the background while the suite runs (see
# scripts/run_tests.sh); tests/test_caffe_gpu.py runs last and waits for it.
test: setup
	bash scripts/run_tests.sh -q -ra --durations=25

# Both Caffe builds, CPU-only and CUDA (tests/test_caffe_gpu.py holds one against the other;
# `make test` builds them too); setup links the one this machine uses, these record the other
# without re-linking.
caffe-variants: setup
	bash scripts/build_caffe.sh --cpu --no-link .venv
	bash scripts/build_caffe.sh --cuda --no-link .venv

# Without the Caffe build (tests that need Caffe skip, or fail when CI=true).
test-fast:
	DLBHC_NO_CAFFE=1 bash scripts/setup_env.sh
	$(PY) -m pytest -q -ra --durations=25

# The inner loop: no Caffe build, no slow tests, no tests that need real Caffe (under a minute).
test-quick:
	DLBHC_NO_CAFFE=1 bash scripts/setup_env.sh
	$(PY) -m pytest -q -m "not slow and not caffe"

bench: setup
	$(PY) benchmarks/run_all.py

# The paper's CIFAR-10 result end to end on a GPU (scripts/paper_recipe.sh says how to configure).
paper: setup
	bash scripts/paper_recipe.sh

# Fuzz every file reader for FUZZ_SECONDS per parser (each in a child process); prints inputs
# tried, aborts, crashes, hangs and unexpected exception types per parser; FUZZ_JOBS parsers at
# once (default: the CPUs), so the 8 parsers take 8 x FUZZ_SECONDS / FUZZ_JOBS.
FUZZ_SECONDS ?= 600
FUZZ_JOBS ?= $(shell nproc)
fuzz: setup
	$(PY) tests/fuzz_targets.py --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS)

clean:
	rm -rf build .venv *.egg-info
