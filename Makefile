# The two commands of the README. Each bootstraps .venv on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-all clean

# torch goes in first, pinned, so that nothing pulls a CUDA build onto a CPU machine.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/t2i demo

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

test-all: $(VENV)/.installed-test
	$(PY) -m pytest -q -m ''

clean:
	rm -rf $(VENV) build *.egg-info
