# Two commands: `make demo` (the whole pipeline on a synthetic dataset) and `make test`.
# Both create .venv and install requirements on first use; later runs skip installation.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := data/demo
CONFIG := configs/demo.yaml

.PHONY: setup chromium demo test lint bench clean-demo

# gpoa is installed with its optional SAM 2.1 and HQ-SAM backends (extras sam2, hq), so their tests
# run, and with gpoa serve's web packages (extra app). sam2 is an sdist built against the installed
# torch (no build isolation) and, with SAM2_BUILD_CUDA=0, without its CUDA extension; setuptools >= 70.1
# builds wheels by itself.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install 'setuptools>=70.1'
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --no-build-isolation -e '.[sam2,hq,app]'
	touch $(STAMP)

setup: $(STAMP) chromium

# gpoa serve's browser tests run in Debian's Chromium and its driver, installed here when missing and
# make runs as root (CI does); otherwise one line says what to install, and the tests say they are skipped
chromium:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
	else echo "make setup: the browser tests need Chromium: as root, apt-get install chromium chromium-driver"; fi

TASKS  := data/tasks
POLICY := checkpoints/demo/best.pt

# One configuration, one policy: the generated task corpus and the demo families' training images
# train ONE policy, which is then applied to both demo families (nothing here is per family).
demo: setup
	test -f $(DEMO)/membrane/dataset.json || $(PY) -m gpoa.demo_data --out $(DEMO) --seed 0 --train 40
	$(PY) -m gpoa.task_data --out $(TASKS) --tasks 80 --train 4 --targets 2 --seed 0
	$(PY) Generate_initial_prompts.py --config $(CONFIG) --data $(DEMO)
	test -f $(POLICY) || $(PY) train_GPOA.py --config $(CONFIG) --data $(TASKS) --data $(DEMO) --run demo --overwrite
	$(PY) test_GPOA.py --config $(CONFIG) --data $(DEMO) --policy $(POLICY)
	$(PY) main_seg.py --config $(CONFIG) --data $(DEMO)

# the suite runs in 2 processes (pytest-xdist), a test file's tests in one of them (--dist loadfile):
# the browser tests then start one server and one Chromium, not one per process
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(PY) -m ruff check gpoa tests benchmarks examples *.py

bench: setup
	$(PY) benchmarks/bench_features.py
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_agent.py
	$(PY) benchmarks/bench_eval.py

clean-demo:
	rm -rf $(DEMO) $(TASKS) checkpoints/demo
