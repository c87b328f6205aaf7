# Two commands: `make demo` (the whole pipeline on a synthetic dataset) and `make test`.
# Both create .venv and install requirements on first use; later runs skip installation.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := data/demo
FAMILIES := membrane objects
CONFIG := configs/demo.yaml

.PHONY: setup demo test lint bench clean-demo

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# training settings of one family on top of $(CONFIG) (test_GPOA.py takes the graph settings from
# the policy): the membrane's distractors are short fragments that look like it patch by patch,
# which the match-context node columns tell apart from the long band
SET_membrane := --set graph.match_context=true
SET_objects  :=

demo: setup
	test -f $(DEMO)/membrane/dataset.json || $(PY) -m gpoa.demo_data --out $(DEMO) --seed 0 --train 80
	set -e; $(foreach family,$(FAMILIES), \
	  $(PY) Generate_initial_prompts.py --config $(CONFIG) --data $(DEMO)/$(family); \
	  test -f checkpoints/demo-$(family)/best.pt || \
	    $(PY) train_GPOA.py --config $(CONFIG) --data $(DEMO)/$(family) $(SET_$(family)) --run demo-$(family) --overwrite; \
	  $(PY) test_GPOA.py --config $(CONFIG) --data $(DEMO)/$(family) --policy checkpoints/demo-$(family)/best.pt; \
	  $(PY) main_seg.py --config $(CONFIG) --data $(DEMO)/$(family);)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check gpoa tests benchmarks *.py

bench: setup
	$(PY) benchmarks/bench_features.py
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_agent.py

clean-demo:
	rm -rf $(DEMO) $(foreach family,$(FAMILIES),checkpoints/demo-$(family))
