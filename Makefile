# Two commands set everything up:
#   make train   venv + install, Fashion-MNIST -> shards, train the default recipe, print the results
#   make test    venv + install if needed, run the test suite
#
# TORCH is the PyTorch requirement installed into a fresh .venv. The default is the CPU build this project's
# CI machines carry; on a GPU machine install your CUDA build instead (`make TORCH=torch train`, or pip-install
# it into .venv first: an importable torch in .venv is never replaced).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := data/fashion_mnist
RECIPE ?= configs/fashion_mnist/resnet20.yaml
RUN ?= runs/fashion_mnist_resnet20
FMNIST_SYS := /usr/share/datasets/fashion-mnist

.PHONY: train test data clean-venv

$(STAMP): pyproject.toml setup.py src/resnet_repro/data/decode/_jpeg_region.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,report]"
	touch $(STAMP)

# Debian/Ubuntu ship Fashion-MNIST as a package; install it when apt-get can run without a prompt,
# otherwise `prepare` downloads the files from the official mirror (checked by SHA-256).
$(DATA)/manifest.json: $(STAMP)
	@if [ ! -f $(FMNIST_SYS)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist || true; \
	  elif sudo -n true 2>/dev/null; then sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist || true; fi; \
	fi
	$(BIN)/resnet-repro prepare fashion-mnist --out $(DATA)

data: $(DATA)/manifest.json

# A run stopped cleanly (SIGTERM, Ctrl-C) exits 0 with its checkpoint saved: say how to go on instead of
# reporting on a run that has not finished.
train: $(DATA)/manifest.json
	$(BIN)/resnet-repro train --config $(RECIPE) --out $(RUN) --resume auto
	@if [ -f $(RUN)/results.json ]; then $(BIN)/resnet-repro report $(RUN); \
	else echo "$(RUN): stopped before the end, checkpoint saved; \`make train\` again resumes it"; fi

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean-venv:
	rm -rf $(VENV)
