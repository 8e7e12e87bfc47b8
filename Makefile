# The venv holds everything the project needs; every target installs it when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= router/default_config.yaml

.PHONY: install run test test-image vllm-env lint proto proto-check bench redis-server clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/install.log)"
	@{ $(BIN)/python -m pip install --upgrade pip && $(BIN)/python -m pip install -e '.[dev]'; } \
	  > $(VENV)/install.log 2>&1 || { tail -30 $(VENV)/install.log; exit 1; }
	touch $(STAMP)

install: $(STAMP)

## Start the whole mesh in one process on the shipped default config (simulated providers).
## Other addresses: make run ARGS="--listen 127.0.0.1:6000 --http 127.0.0.1:9000"
run: $(STAMP)
	$(BIN)/imesh up --config $(CONFIG) $(ARGS)

## Tests need a redis-server binary (each test run starts its own on a free port).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null 2>&1 || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq redis-server) >/dev/null; }

## A real vLLM engine on CPU for the GPU pool's end-to-end tests (marker `vllm`; deselect with
## -m 'not vllm'): its own venv, built once into ~/.cache/inference-mesh (a few minutes).
## Unavailable, those tests skip; with IMESH_REQUIRE_VLLM=1 (CI) this target fails instead.
vllm-env: $(STAMP)
	@$(BIN)/python tests/vllm_pool/vllm_env.py >/dev/null || { [ "$$IMESH_REQUIRE_VLLM" != 1 ] && \
	  echo "no vLLM environment: the vllm tests will skip"; }

test: $(STAMP) redis-server vllm-env
	$(BIN)/python -m pytest -q

## Build deploy/Dockerfile offline (Debian base made by debootstrap, cached; wheels built on
## the host), run `imesh up` in it and call it from the host. Installs docker.io and starts
## dockerd when missing; skips, saying why, only when no daemon can start.
test-image: $(STAMP)
	PY=$(BIN)/python deploy/test-image.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint

# Generated code lands in imesh/v1 (OUT=root of the tree to write into).
OUT ?= .
proto: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I proto --python_out=$(OUT) --mypy_out=$(OUT) \
	  --grpc_python_out=$(OUT) --mypy_grpc_out=$(OUT) proto/imesh/v1/*.proto

## Fails when the committed generated code differs from what proto/ generates.
proto-check: $(STAMP)
	$(BIN)/buf lint
	@tmp=$$(mktemp -d); $(MAKE) -s proto OUT=$$tmp >/dev/null; \
	  if diff -r -x __init__.py -x py.typed -x __pycache__ $$tmp/imesh/v1 imesh/v1 >/dev/null; then \
	    echo "generated code is current"; rm -rf $$tmp; \
	  else diff -r -x __init__.py -x py.typed -x __pycache__ $$tmp/imesh/v1 imesh/v1 | head -20; \
	    rm -rf $$tmp; echo "imesh/v1 is stale: run 'make proto'"; exit 1; fi
	@if git rev-parse --verify -q origin/main >/dev/null && git cat-file -e origin/main:buf.yaml 2>/dev/null; then \
	  $(BIN)/buf breaking --against '.git#branch=origin/main'; \
	elif git rev-parse --verify -q main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
	  $(BIN)/buf breaking --against '.git#branch=main'; fi

## The mesh beside a zero-delay upstream, the floors of a Python hop (minimal aiohttp relay,
## bare grpc.aio hop) and LiteLLM (installed once into its own cached venv outside the repo),
## then the httpx transports: each server in its own process on loopback, stopped at the end,
## under 10 minutes on 2 cores. Writes bench/results/LATEST.md, transports.md, their JSON and
## profile-mesh-rest.md (py-spy, one extra unmeasured round); LATEST.md ends with a
## before/after table against the results it replaces.
bench: $(STAMP)
	$(BIN)/imesh bench --out bench/results --profile \
	  $(if $(wildcard bench/results/LATEST.json),--compare-to bench/results/LATEST.json) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
