# towerserve: `make run` builds data + artifacts if missing and serves; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= data/seed
ARTIFACTS ?= artifacts/seed
PORT   ?= 50051
# Tests and tools find the packaged MiniLM offline; never reach for the hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export USE_TF := 0

.PHONY: run test test-fast install data artifacts serve bench bench-deps proto proto-check clean

install: $(STAMP)

# Reinstall only when the project's dependency list changes, so `make test` stays fast.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(DATA)/users.csv: | $(STAMP)
	$(VENV)/bin/towerserve generate --out $(DATA) --users 10000 --items 1000 --seed 42

data: $(DATA)/users.csv
	$(VENV)/bin/towerserve baselines --data $(DATA)

$(ARTIFACTS)/manifest.json: $(DATA)/users.csv | $(STAMP)
	$(VENV)/bin/towerserve train --data $(DATA) --out $(ARTIFACTS) --model all

$(ARTIFACTS)/serving/manifest.json: $(ARTIFACTS)/manifest.json
	$(VENV)/bin/towerserve export --artifacts $(ARTIFACTS)

artifacts: $(ARTIFACTS)/serving/manifest.json

run: data artifacts
	@echo "Serving $(ARTIFACTS)/serving on port $(PORT). Try, from another shell:"
	@echo "  $(VENV)/bin/towerserve recommend --target localhost:$(PORT) --user tec_0001 -n 5"
	@echo "  grpcurl -plaintext -d '{\"user_id\": \"tec_0001\", \"top_n\": 5}' localhost:$(PORT) towerserve.v1.Recommender/Recommend"
	$(VENV)/bin/towerserve serve --artifacts $(ARTIFACTS)/serving --port $(PORT)

# gpu-marked tests skip themselves (with the reason) where onnxruntime has no CUDA.
test: $(STAMP)
	$(PY) -m pytest -q

# The fast tier: everything but the `slow` marker (tests that build the tiny pipeline or BERT, train,
# or generate at scale); see tests/conftest.py.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

proto: $(STAMP)
	$(PY) proto/generate.py

proto-check: $(STAMP)
	$(PY) proto/generate.py --check

bench: $(STAMP)
	$(PY) benchmarks/bench_metrics.py

# The peers of benchmarks/peers.py (the `bench` extra). lightfm is an sdist that only builds through
# setup.py's legacy path, without build isolation, which pip 25.3 removed: a pip 25.2 run from its
# wheel builds it (the venv's own pip is left as it is), then the rest of the extra installs.
bench-deps: $(STAMP)
	$(PY) -m pip install -q setuptools wheel cython
	$(PY) -m pip download -q --no-deps 'pip>=25,<25.3' -d $(VENV)/.pip-legacy
	$(PY) $$(ls $(VENV)/.pip-legacy/pip-*.whl | tail -1)/pip install -q --no-build-isolation 'lightfm>=1.17'
	$(PY) -m pip install -q -e '.[bench]'

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
