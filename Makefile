# make demo   set up the environment if needed, then train and compare a window decoder (constant state) vs a vanilla transformer on toy data
# make test   set up the environment if needed, then run the whole test suite
# make lint   set up the environment if needed, then check the code with ruff
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvattn-setup-stamp

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml scripts/setup_env.sh
	scripts/setup_env.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m kvattn_fairseq demo

# one worker per core (TEST_JOBS), each file's tests on one worker so its module fixtures are built once; one
# thread each, or the workers' fairseq runs would oversubscribe the cores
# the compile check runs in a process of its own: it imports triton for compiling, which the interpreter-mode
# kernel tests cannot share
TEST_JOBS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(TEST_JOBS) --dist loadfile tests \
		--ignore=tests/test_compile_check.py
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest tests/test_compile_check.py

# the style rules are pyproject.toml's [tool.ruff]
lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) demo_out .pytest_cache
