# The two commands of the README: `make run` and `make test`. Each does its own
# set-up from a fresh clone: virtualenv, packages, generated models, Kafka jars.

PYTHON ?= python3.11
VENV ?= .venv
# cpu: tensorflow-cpu; gpu: tensorflow with its CUDA libraries.
TF_EXTRA ?= cpu
MODELS ?= models
PORT ?= 4343
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run demo test setup models kafka-jars bench lint clean

# The bridge, embedded (no Kafka): http://localhost:$(PORT)/docs
run: setup models
	$(BIN)/tfstream-bridge --repository $(MODELS) --port $(PORT)

# Kafka, two workers, the bridge in Kafka mode and two generated cameras; Ctrl-C stops all.
# The live page: http://localhost:$(PORT)/streams
demo: setup models kafka-jars
	$(BIN)/python -m deploy.local.demo --repository $(MODELS) --port $(PORT)

# The whole suite, the container tier (marker `containers`) included: it installs
# podman, buildah, runc and debootstrap with apt-get when they are missing (as
# tests/demo installs Chromium) and keeps podman's images and layers between runs.
# -m "": every test, also those pyproject.toml's addopts leave out of a bare pytest.
# Without the container tier: make test PYTEST_ARGS='-m "not containers"'
test: setup models kafka-jars
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

setup: $(VENV)/.installed

# The install step: deploy/install.sh, shared with deploy/Dockerfile and Dockerfile.gpu.
$(VENV)/.installed: pyproject.toml deploy/install.sh deploy/model-garden-requirements.txt \
		deploy/tracking-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	bash deploy/install.sh $(BIN)/pip '$(TF_EXTRA),dev' --editable
	touch $@

# Generates only the models that are missing.
models: setup
	$(BIN)/tfstream-models generate $(MODELS)

kafka-jars:
	bash deploy/kafka-local/fetch-jars.sh

# Writes docs/benchmarks.md (starts its own Kafka broker and workers).
bench: setup models kafka-jars
	$(BIN)/python -m bench.run_all --repository $(MODELS)

lint: setup
	$(BIN)/ruff check engines consumer producer_tools http_bridge tests bench deploy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
