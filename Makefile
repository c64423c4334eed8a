# make demo: install what is missing, then profile, solve and train a small model under a budget.
# make test: install what is missing, then run the test suite.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
OUT ?= out

.PHONY: install demo test test-all lint clean

install:
	@$(PYTHON) -c "import torch, torchvision" 2>/dev/null || \
		$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[test]"

demo: install
	mkdir -p $(OUT)
	monet profile torchvision:resnet18 --batch 16 --image-size 96 --device cpu --estimate -o $(OUT)/profile.json
	monet solve $(OUT)/profile.json --budget 0.85 --time-limit 30 -o $(OUT)/plan.json
	monet inspect $(OUT)/plan.json
	$(PYTHON) examples/train_resnet.py --plan $(OUT)/plan.json --batch 16 --image-size 96 --steps 3

# One pytest-xdist worker per logical core (-n auto would count physical ones where psutil is
# installed), each test module on one worker (its module fixtures made once); then, alone,
# the tests that time the planner or need the second core for its full-MILP worker (beside
# another worker a 16.6 s solve took 21.8 s).
test: install
	$(PYTHON) -m pytest -q -n logical --dist loadscope -m "not slow and not alone"
	$(PYTHON) -m pytest -q -m "not slow and alone"

test-all: install
	$(PYTHON) -m pytest -q -n logical --dist loadscope -m "not alone"
	$(PYTHON) -m pytest -q -m "alone"

lint: install
	$(PYTHON) -m ruff check profiler planner runtime examples tests bench

clean:
	rm -rf $(OUT) .pytest_cache *.egg-info
