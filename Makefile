# Two commands on a fresh clone: `make demo` (set up, train and evaluate a small FreeTickets
# ensemble on Fashion-MNIST) and `make test` (set up, run the whole test suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test setup data clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Fashion-MNIST offline: Debian's dataset-fashion-mnist package when we may install it;
# otherwise the loader downloads it as torchvision does (online machines).
data:
	@if [ ! -f $(FMNIST_DEB) ] && [ ! -d data/FashionMNIST/raw ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "could not install dataset-fashion-mnist; the demo will try to download Fashion-MNIST"; \
	fi

demo: $(STAMP) data
	$(PY) -m sparselearning.demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
