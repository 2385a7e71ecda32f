"""Read a LeRobot v3.0 dataset folder with LeRobot's own LeRobotDataset, offline, and dump what it sees.

Runs in the PEER venv made by benchmarks/peers/setup.sh (lerobot 0.4.4), never in the project venv:

    .venv-peers/bin/python benchmarks/peers/check_lerobot_reader.py --dataset DIR --out result.json

Imports only lerobot / torch / numpy / pyarrow / the standard library (not `vla`). Writes
  result.json   lerobot_version, torch_version, backend used, episodes / frames / tasks as LeRobot sees
                them, per-episode task strings, errors (with tracebacks) of every step that failed;
  result.npz    state (N,S) float32, action (N,D) float32, episode_index (N,), frame_index (N,),
                task (N,) str, and per camera frames_<camera> (k,H,W,3) uint8 + frame_ids_<camera> (k,)
                for k sampled global frame indices (the same indices for every camera).
Exit status 0 when the dataset loaded and every frame was read, 1 otherwise (result.json is always written).

Video backends: LeRobot 0.4.4's "pyav" backend calls torchvision.io.VideoReader, which torchvision
>= 0.26 (the only torchvision for the peer venv's torch 2.13) no longer has; so by default "pyav" is
tried first and, if decoding fails, "torchcodec" (LeRobot's default backend). torchcodec needs FFmpeg
shared libraries: this script puts <venv>/lib/ffmpeg-from-av (made by setup.sh) on LD_LIBRARY_PATH and
re-executes itself once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

FFDIR = Path(sys.prefix) / "lib" / "ffmpeg-from-av"
if FFDIR.is_dir() and str(FFDIR.resolve()) not in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
    # The dynamic loader reads LD_LIBRARY_PATH at process start only.
    os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in (str(FFDIR.resolve()), os.environ.get("LD_LIBRARY_PATH")) if p)
    os.execv(sys.executable, [sys.executable, *sys.argv])

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402


def _err(result: dict, step: str, exc: BaseException) -> None:
    result["errors"].append({"step": step, "type": type(exc).__name__, "message": str(exc),
                             "traceback": traceback.format_exc()})


def _to_uint8_hwc(t) -> np.ndarray:
    """LeRobot returns camera frames as float32 (C,H,W) in [0,1]; give back uint8 (H,W,C)."""
    a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return a


def _sample_ids(n: int, k: int, episode_starts: list[int]) -> list[int]:
    """k global frame indices: first frames of the first/last episodes, the last frame, evenly spaced rest."""
    if n <= 0 or k <= 0:
        return []
    picks = {0, n - 1}
    if episode_starts:
        picks.add(episode_starts[-1])
        if len(episode_starts) > 1:
            picks.add(episode_starts[1] - 1)  # last frame of the first episode
    for x in np.linspace(0, n - 1, num=k):
        if len(picks) >= k:
            break
        picks.add(int(round(x)))
    return sorted(picks)[:max(k, 2)]


def _open(LeRobotDataset, root: str, backend: str):
    return LeRobotDataset("local/check", root=root, video_backend=backend)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, help="LeRobot v3.0 dataset folder (meta/, data/, videos/)")
    ap.add_argument("--out", required=True, help="result JSON path; the arrays go to the same name with .npz")
    ap.add_argument("--frames-per-camera", type=int, default=8, help="sampled frames decoded per camera")
    ap.add_argument("--video-backend", default="pyav",
                    help="LeRobot video_backend to try first; torchcodec is tried next if decoding fails")
    args = ap.parse_args(argv)

    out = Path(args.out)
    npz_path = out.with_suffix(".npz")
    result: dict = {"dataset": str(Path(args.dataset).resolve()), "errors": [], "ok": False}
    arrays: dict[str, np.ndarray] = {}
    t0 = time.time()
    cache = tempfile.TemporaryDirectory(prefix="lr_check_hf_")
    os.environ["HF_DATASETS_CACHE"] = cache.name  # no stale Arrow cache between runs

    try:
        import pyarrow
        import torch
        import lerobot
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
        result.update(lerobot_version=lerobot.__version__, torch_version=torch.__version__,
                      numpy_version=np.__version__, pyarrow_version=pyarrow.__version__)
        try:
            import torchvision
            result["torchvision_version"] = torchvision.__version__
        except Exception as e:  # noqa: BLE001
            _err(result, "import torchvision", e)
    except Exception as e:  # noqa: BLE001
        _err(result, "import", e)
        return _finish(result, out, npz_path, arrays, t0)

    # 1. open with LeRobot (metadata + parquet); the backend only matters once frames are decoded
    backends = [args.video_backend] + [b for b in ("torchcodec",) if b != args.video_backend]
    try:
        ds = _open(LeRobotDataset, args.dataset, backends[0])
    except Exception as e:  # noqa: BLE001
        _err(result, "LeRobotDataset(...)", e)
        return _finish(result, out, npz_path, arrays, t0)

    meta = ds.meta
    result.update(num_episodes=int(ds.num_episodes), num_frames=int(ds.num_frames), len=len(ds),
                  fps=float(ds.fps), codebase_version=meta.info.get("codebase_version"),
                  features={k: {"dtype": v.get("dtype"), "shape": list(v.get("shape") or [])}
                            for k, v in ds.features.items()},
                  camera_keys=list(meta.camera_keys), video_keys=list(meta.video_keys),
                  image_keys=list(meta.image_keys))
    try:
        result["tasks"] = {str(name): int(row["task_index"]) for name, row in meta.tasks.iterrows()}
    except Exception as e:  # noqa: BLE001
        _err(result, "meta.tasks", e)

    # 2. per-episode metadata as LeRobot reads meta/episodes/*.parquet
    episodes = []
    try:
        for ep in meta.episodes:
            episodes.append({"episode_index": int(ep["episode_index"]), "tasks": list(ep["tasks"]),
                             "length": int(ep["length"]),
                             "dataset_from_index": int(ep["dataset_from_index"]),
                             "dataset_to_index": int(ep["dataset_to_index"])})
    except Exception as e:  # noqa: BLE001
        _err(result, "meta.episodes", e)
    result["episodes"] = episodes

    # 3. every frame's low-dim data through LeRobot's hf_dataset (its transform -> torch tensors)
    keys = ["observation.state", "action", "episode_index", "frame_index", "index", "timestamp", "task_index"]
    cols: dict[str, list] = {k: [] for k in keys}
    try:
        hf = ds.hf_dataset
        n = len(hf)
        for a in range(0, n, 256):
            batch = hf[a:min(a + 256, n)]
            for k in keys:
                cols[k].extend(np.asarray(x.numpy() if hasattr(x, "numpy") else x) for x in batch[k])
        arrays["state"] = np.stack(cols["observation.state"]).astype(np.float32)
        arrays["action"] = np.stack(cols["action"]).astype(np.float32)
        for k in ("episode_index", "frame_index", "index", "task_index"):
            arrays[k] = np.asarray(cols[k]).reshape(-1).astype(np.int64)
        arrays["timestamp"] = np.asarray(cols["timestamp"]).reshape(-1).astype(np.float32)
        names = meta.tasks.index.tolist()
        arrays["task"] = np.asarray([str(names[i]) for i in arrays["task_index"]])
        result["frames_read"] = int(n)
        starts = {}
        for i, e in enumerate(arrays["episode_index"]):
            starts.setdefault(int(e), i)
        result["episode_task_from_frames"] = {str(e): str(arrays["task"][i]) for e, i in starts.items()}
        result["episode_lengths_from_frames"] = {str(e): int((arrays["episode_index"] == e).sum()) for e in starts}
    except Exception as e:  # noqa: BLE001
        _err(result, "hf_dataset low-dim", e)
        starts = {}

    # 4. full __getitem__ (video/image decoding + task string) on sampled frames
    ids = _sample_ids(len(ds), args.frames_per_camera, sorted(starts.values()))
    cams = list(meta.camera_keys)
    result["video"] = "no video features" if not meta.video_keys else "not checked"
    for bi, backend in enumerate(backends):
        if bi > 0:
            if not meta.video_keys:
                break
            try:
                ds = _open(LeRobotDataset, args.dataset, backend)
            except Exception as e:  # noqa: BLE001
                _err(result, f"LeRobotDataset(video_backend={backend!r})", e)
                continue
        try:
            frames = {c: [] for c in cams}
            items = []
            for i in ids:
                item = ds[i]
                for c in cams:
                    frames[c].append(_to_uint8_hwc(item[c]))
                items.append({"i": i, "task": item.get("task"),
                              "episode_index": int(item["episode_index"]),
                              "frame_index": int(item["frame_index"]),
                              "state_matches_bulk": bool(np.array_equal(
                                  item["observation.state"].numpy(), arrays["state"][i]))
                              if "state" in arrays else None})
            for c in cams:
                name = c.split(".")[-1]
                arrays[f"frames_{name}"] = np.stack(frames[c])
                arrays[f"frame_ids_{name}"] = np.asarray(ids, dtype=np.int64)
            result["getitem"] = items
            result["video_backend"] = backend if meta.video_keys else None
            if meta.video_keys:
                result["video"] = f"decoded with LeRobot video_backend={backend!r}"
            break
        except Exception as e:  # noqa: BLE001
            _err(result, f"__getitem__ (video_backend={backend!r})", e)
            if not meta.video_keys:
                break
    if meta.video_keys and "video_backend" not in result:
        result["video"] = "not checked: every backend failed (see errors)"
    elif meta.video_keys:
        # a backend that failed before another one decoded is a finding, not a failure of the check
        result["video_backend_failures"] = [e for e in result["errors"] if e["step"].startswith("__getitem__")]
        result["errors"] = [e for e in result["errors"] if not e["step"].startswith("__getitem__")]

    result["ok"] = bool("state" in arrays and all(f"frames_{c.split('.')[-1]}" in arrays for c in cams))
    return _finish(result, out, npz_path, arrays, t0)


def _finish(result: dict, out: Path, npz_path: Path, arrays: dict, t0: float) -> int:
    result["seconds"] = round(time.time() - t0, 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    if arrays:
        np.savez_compressed(npz_path, **arrays)
        result["npz"] = str(npz_path)
        result["npz_arrays"] = {k: list(v.shape) for k, v in arrays.items()}
    out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: result.get(k) for k in ("ok", "lerobot_version", "torch_version", "num_episodes",
                                                  "num_frames", "tasks", "video", "seconds")}, default=str))
    for e in result.get("video_backend_failures", []):
        print(f"note: {e['step']} failed, another backend decoded: {e['type']}: {e['message']}", file=sys.stderr)
    for e in result["errors"]:
        print(f"ERROR in {e['step']}: {e['type']}: {e['message']}", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
