# reslab: two set-up commands that work on a fresh machine.
#   make demo   create .venv if missing, install reslab, train a ResNet on Fashion-MNIST
#   make test   create .venv if missing, install reslab + test extras, lint (ruff), run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test install data test-deps clean

install: $(STAMP)

# Exact tested versions come from constraints.txt; pyproject.toml keeps ranges for users.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package (real data, 60k/10k images); says how to get it otherwise.
data:
	@if [ ! -e $(FMNIST) ]; then \
	  echo "Installing Debian's dataset-fashion-mnist ..."; \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	  || echo "Could not install dataset-fashion-mnist (needs root and apt). Install it, or pass --data-dir DIR holding the four *-idx?-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist"; \
	fi

# Headless Chromium renders report.html in the report tests (Debian's package; skipped if apt is unavailable).
test-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "Installing Debian's chromium for the report rendering test ..."; \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "Could not install chromium (needs root and apt); the report rendering test will be skipped"; \
	fi

demo: $(STAMP) data
	$(BIN)/reslab demo

# Lint and format checks first (ruff, configured in pyproject.toml), then the suite.
test: $(STAMP) data test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
