# The two set-up commands a newcomer needs: `make demo` and `make test`. Both install what they need.
# torch is installed with pip first (it finds the CPU build pip is configured for; uv would fetch a CUDA build),
# then uv installs the rest in seconds. On a machine without a local CPU wheel, set
# TORCH_INDEX="--index-url <PyTorch's CPU wheel index>" to avoid the multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean chromium

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_INDEX) torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check "uv>=0.13,<0.14"
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[build,ota,serve,report,search,dev]"
	@touch $(STAMP)

# Headless Chromium for the report screenshot test (Debian's package; skipped with a reason where it cannot install).
chromium:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed: the report screenshot test will be skipped"; }

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeslm build --recipe src/edgeslm/recipes/demo.toml --out out/demo --force

test: $(STAMP) chromium
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_latency.py

clean:
	rm -rf $(VENV) out
