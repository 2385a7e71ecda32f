#!/usr/bin/env bash
# Peer venv with LeRobot 0.4.4 (the newest LeRobot that supports Python 3.11), used by
# benchmarks/peers/check_lerobot_reader.py to read our LeRobot v3.0 exports with LeRobot's own reader.
#
#   bash benchmarks/peers/setup.sh            # creates ./.venv-peers (or $PEERS_VENV)
#
# It is kept apart from the project venv because lerobot 0.4.4 pins torch<2.11 / torchvision<0.26,
# and the only torch we can install without a multi-GB CUDA download is the CPU wheel torch 2.13.0+cpu.
# So:
#   * torch 2.13.0+cpu from a local wheel ($PEERS_TORCH_WHEEL);
#   * torchvision 0.28.0 (the release for torch 2.13) with a constraints file pinning torch, so pip can
#     never swap torch for a CUDA build. The only 0.28.0 wheel reachable is CUDA-linked: its _C ops
#     library cannot load next to a CPU torch and `import torchvision` dies in _meta_registrations
#     ("operator torchvision::nms does not exist"). We patch that file so the two unguarded fake-kernel
#     registrations are skipped when the ops are absent (same guard torchvision uses everywhere else).
#     Python-side torchvision (transforms v2, which LeRobot uses) works; C++ ops (nms, roi_align, ...) don't.
#   * lerobot==0.4.4 with --no-deps, then its declared core requirements except torch/torchvision/
#     torchcodec (taken from the wheel's METADATA, listed below) installed under the same constraints.
#   * torchcodec 0.13.0 (stable-ABI build, torch>=2.11) with --no-deps, for LeRobot's default video
#     backend. torchvision>=0.26 no longer ships VideoReader, so LeRobot's "pyav" backend cannot work
#     here. torchcodec needs FFmpeg shared libraries; instead of system packages we expose the FFmpeg 7
#     libraries bundled in the PyAV wheel under their plain sonames in $VENV/lib/ffmpeg-from-av
#     (put that folder on LD_LIBRARY_PATH; check_lerobot_reader.py does it by itself).
#
# Idempotent: does nothing when $VENV/.installed is newer than this script.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SCRIPT="benchmarks/peers/setup.sh"
VENV="${PEERS_VENV:-.venv-peers}"
PYTHON="${PEERS_PYTHON:-python3.11}"
TORCH_WHEEL="${PEERS_TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
TORCH_VERSION="2.13.0"
TORCHVISION_VERSION="0.28.0"
TORCHCODEC_VERSION="0.13.0"
LEROBOT_VERSION="0.4.4"

if [[ -f "$VENV/.installed" && "$VENV/.installed" -nt "$SCRIPT" ]]; then
    echo "peers venv $VENV is up to date (delete $VENV/.installed to force a reinstall)"
    exit 0
fi

start=$(date +%s)
if [[ ! -f "$TORCH_WHEEL" ]]; then
    echo "error: CPU torch wheel not found: $TORCH_WHEEL (set PEERS_TORCH_WHEEL); refusing to pull a CUDA torch" >&2
    exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { echo "error: $VENV is not a Python 3.11 venv; delete it and rerun" >&2; exit 1; }

# pip warns once per package that a file:// extra index of this machine does not carry; drop that noise.
pip_install() {
    "$PY" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

CONSTRAINTS="$VENV/peers-constraints.txt"
printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > "$CONSTRAINTS"

# lerobot 0.4.4 core Requires-Dist minus torch (<2.11), torchvision (<0.26) and torchcodec (<0.11).
REQS="$VENV/peers-lerobot-deps.txt"
cat > "$REQS" <<'EOF'
datasets>=4.0.0,<5.0.0
diffusers>=0.27.2,<0.36.0
huggingface-hub[cli,hf-transfer]>=0.34.2,<0.36.0
accelerate>=1.10.0,<2.0.0
setuptools>=71.0.0,<81.0.0
cmake>=3.29.0.1,<4.2.0
einops>=0.8.0,<0.9.0
opencv-python-headless>=4.9.0,<4.13.0
av>=15.0.0,<16.0.0
jsonlines>=4.0.0,<5.0.0
packaging>=24.2,<26.0
pynput>=1.7.7,<1.9.0
pyserial>=3.5,<4.0
wandb>=0.24.0,<0.25.0
draccus==0.10.0
gymnasium>=1.1.1,<2.0.0
rerun-sdk>=0.24.0,<0.27.0
deepdiff>=7.0.1,<9.0.0
imageio[ffmpeg]>=2.34.0,<3.0.0
termcolor>=2.4.0,<4.0.0
EOF

echo "== torch $TORCH_VERSION (CPU) from $TORCH_WHEEL"
pip_install "$TORCH_WHEEL"
echo "== torchvision $TORCHVISION_VERSION, numpy, pyarrow, msgpack, pyzmq (torch pinned)"
# msgpack + pyzmq: benchmarks/peers/serve_lerobot.py serves LeRobot policies through robot_bridge's PolicyServer
pip_install -c "$CONSTRAINTS" "torchvision==$TORCHVISION_VERSION" numpy pyarrow "msgpack>=1.0" "pyzmq>=25"
echo "== lerobot $LEROBOT_VERSION (--no-deps) and its dependencies (torch pinned)"
pip_install -c "$CONSTRAINTS" -r "$REQS"
pip_install --no-deps "lerobot==$LEROBOT_VERSION"
echo "== torchcodec $TORCHCODEC_VERSION (--no-deps)"
pip_install --no-deps "torchcodec==$TORCHCODEC_VERSION"

# Patch torchvision's two unguarded fake-kernel registrations (see the header). Idempotent.
"$PY" - <<'EOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
src = path.read_text()
tag = "# [patched by vla-stack benchmarks/peers/setup.sh]"
if tag in src:
    print(f"torchvision patch: already applied ({path})")
else:
    anchor = "import torchvision.extension  # noqa: F401\n"
    if anchor not in src:
        raise SystemExit(f"torchvision patch: anchor not found in {path}")
    shim = anchor + f"""

{tag} CPU torch + CUDA-linked torchvision wheel: the _C ops
# library cannot load, so skip fake-kernel registration for ops that do not exist.
def _register_fake_if_ops(name, *args, **kwargs):
    if torchvision.extension._has_ops():
        return torch.library.register_fake(name, *args, **kwargs)
    return lambda fn: fn
"""
    n = src.count('@torch.library.register_fake("torchvision::')
    src = src.replace(anchor, shim, 1).replace('@torch.library.register_fake("torchvision::',
                                               '@_register_fake_if_ops("torchvision::')
    path.write_text(src)
    print(f"torchvision patch: guarded {n} register_fake calls in {path}")
EOF

# FFmpeg libraries for torchcodec, taken from the PyAV wheel (all of av.libs is linked so that the
# libraries' $ORIGIN rpath still finds their own dependencies).
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
FFDIR="$VENV/lib/ffmpeg-from-av"
rm -rf "$FFDIR" && mkdir -p "$FFDIR"
for f in "$SITE"/av.libs/*.so*; do
    b=$(basename "$f")
    ln -s "$(realpath "$f")" "$FFDIR/$b"
    case "$b" in
        libavcodec-*|libavdevice-*|libavfilter-*|libavformat-*|libavutil-*|libswresample-*|libswscale-*)
            rest=${b#*.so.}
            ln -s "$b" "$FFDIR/${b%%-*}.so.${rest%%.*}" ;;
    esac
done

echo "== smoke test"
"$PY" - <<'EOF'
import importlib.metadata as md
import torch, torchvision, lerobot
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: F401
assert torch.version.cuda is None, f"torch is a CUDA build: {torch.__version__}"
cuda_pkgs = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia-"))
assert not cuda_pkgs, f"CUDA packages got installed: {cuda_pkgs}"
print(f"lerobot {lerobot.__version__}  torch {torch.__version__}  torchvision {torchvision.__version__} "
      f"(C++ ops: {torchvision.extension._has_ops()})")
EOF
if LD_LIBRARY_PATH="$(realpath "$FFDIR")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PY" -c \
    'import torchcodec.decoders, torchcodec; print("torchcodec", torchcodec.__version__, "loads with PyAV FFmpeg")' 2>/dev/null; then
    :
else
    echo "warning: torchcodec does not load; LeRobot video decoding will not work in this venv" >&2
fi

touch "$VENV/.installed"
echo "peers venv ready: $VENV ($(du -sh "$VENV" | cut -f1), $(( $(date +%s) - start )) s)"
