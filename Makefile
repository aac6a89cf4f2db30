# The two front-door commands: `make demo` and `make test`. Both set up .venv when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
SHAPES ?= data/shapes
DEMO_CONFIG ?= configs/shapes_resnet18.py

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[test]'
	touch $@

# Generate the shapes data set, train ResNet-18 CenterNet on it, evaluate, draw detections.
demo: setup
	$(PY) -m centernet_jax.train --config $(DEMO_CONFIG) --workdir $(WORKDIR) \
	  --config.data.shapes_dir=$(SHAPES)
	$(PY) -m centernet_jax.evaluate --config $(DEMO_CONFIG) --workdir $(WORKDIR) \
	  --config.data.shapes_dir=$(SHAPES)
	$(PY) -m centernet_jax.predict --config $(DEMO_CONFIG) --workdir $(WORKDIR) \
	  --output $(WORKDIR)/predictions --grid --images $$(ls $(SHAPES)/val/*.jpg | head -n 8)
	@echo "metrics: $$(ls -d $(WORKDIR)/eval/step_*/metrics.json | sort -V | tail -n 1)"
	@echo "pictures: $(WORKDIR)/predictions/grid.png"

test: setup
	$(PY) -m pytest -q -n 2 --durations=15 tests

lint: setup
	$(VENV)/bin/ruff check centernet_jax tests configs experiments

clean:
	rm -rf runs $(VENV)
