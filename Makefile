# Two entry points that do all set-up themselves on a fresh clone: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
DEMO_OUT := demo-out

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs TensorFlow and scikit-image only; the tests need every backend.
$(VENV)/.demo-deps: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[tf,demo]'
	touch $@

$(VENV)/.test-deps: $(VENV)/.demo-deps
	$(PIP) -e '.[tf,torch,onnx,test,demo]'
	touch $@

# Sample TFRecords (generated scenes, real photos, one bad record), the real CLI on them
# with the bundled detector, then where everything went and a few results.
demo: $(VENV)/.demo-deps
	rm -rf $(DEMO_OUT)
	$(BIN)/python -m demo.make_samples --out_dir $(DEMO_OUT)/samples
	$(BIN)/batch-predict --input_file_patterns '$(DEMO_OUT)/samples/*.tfrecord' --input_file_format tfrecord \
		--model_dir demo/model/saved_model --batch_size 8 \
		--output_result_prefix $(DEMO_OUT)/predictions --output_error_prefix $(DEMO_OUT)/errors
	$(BIN)/python -m demo.show_results --output_result_prefix $(DEMO_OUT)/predictions

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT)
