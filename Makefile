# The README's two commands live here: `make train` (the main job) and `make test` (install + lint + tests).
PYTHON ?= python3
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install train demo test lint format bench

# torch first: an installed torch that the package's range admits is kept; otherwise the pinned CPU build is taken,
# never a looser request that would pull gigabytes of CUDA packages. Installs once per Python: a stamp newer than
# pyproject.toml (and the package still importable) skips it, so a repeat `make test` starts testing at once; a fresh
# clone has no stamp and installs everything.
STAMP := .make/installed-$(shell $(PYTHON) -c "import hashlib, sys; print(hashlib.sha1(sys.prefix.encode()).hexdigest()[:12])")

install:
	@if [ "$(STAMP)" -nt pyproject.toml ] && $(PYTHON) -c "import captioning, accelerate, pytest" 2>/dev/null; then \
		echo "install: up to date for $(PYTHON) (delete $(STAMP) to reinstall)"; \
	else \
		$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"; \
		$(PYTHON) -m pip install -e ".[dev,train]" && mkdir -p .make && touch "$(STAMP)"; \
	fi

# Trains the default captioner on the built-in hard synthetic scenes (CPU, a 6-minute training budget), scores the test
# split beside the split's human agreement, and prints where the model, metrics and pictures are.
train: install
	$(PYTHON) train.py --config configs/synthetic-hard.yaml

demo: install
	$(PYTHON) -m captioning.cli demo --output_dir outputs/demo

# Benchmarks (minutes; results and commands in BENCHMARKS.md): training throughput and the feature cache, then
# captioner against transformers' VisionEncoderDecoderModel at matched sizes.
bench: install
	$(PYTHON) bench/bench_train.py
	$(PYTHON) bench/bench_vs_ved.py --output outputs/bench_vs_ved.json

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

test: install lint
	$(PYTHON) -m pytest -q
