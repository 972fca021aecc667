# make demo   set up the environment if needed, then train and compare a window decoder (constant state) vs a vanilla transformer on toy data
# make test   set up the environment if needed, then run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvattn-setup-stamp

.PHONY: setup demo test clean

$(STAMP): pyproject.toml scripts/setup_env.sh
	scripts/setup_env.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m kvattn_fairseq demo

test: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) demo_out .pytest_cache
