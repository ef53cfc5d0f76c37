# The README's two commands live here: `make demo` (the main job) and `make test` (install + lint + tests).
PYTHON ?= python3
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint format

# torch first: an installed torch that the package's range admits is kept; otherwise the pinned CPU build is taken,
# never a looser request that would pull gigabytes of CUDA packages.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev,train]"

demo: install
	$(PYTHON) -m captioning.demo --output_dir outputs/demo

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

test: install lint
	$(PYTHON) -m pytest -q
