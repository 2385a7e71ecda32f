"""LeRobot dataset v3.0 in a local folder, read and written with pyarrow and PyAV (no LeRobot import: no LeRobot
release installs next to Python 3.11 + torch 2.13 + transformers 5; docs/ARCHITECTURE.md "Data").

    meta/info.json                                  codebase_version "v3.0", fps, features {key: dtype, shape, names}
    meta/stats.json                                 per feature: min, max, mean, std, count, q01..q99
    meta/tasks.parquet                              task strings (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet        per episode: tasks, length, dataset_from/to_index, data/chunk_index,
                                                    data/file_index, videos/<key>/{chunk_index, file_index,
                                                    from_timestamp, to_timestamp}, stats/<feature>/<stat>
    data/chunk-000/file-000.parquet                 one row per frame: features, timestamp, frame_index, episode_index,
                                                    index, task_index; image features as {bytes: PNG, path}
    videos/<key>/chunk-000/file-000.mp4             many episodes per file, one after another: an episode is the frames
                                                    with from_timestamp <= t < to_timestamp

Reading (`LeRobotDir`): the feature map is read from info.json (cameras: the video and image features, named by their
key without "observation.images."; state: "observation.state"; action: "action"; instruction: each episode's task
string; fps). Frames are decoded once per video file in order, made square (`frame_fit`) and resized, and written to
an on-disk cache (`FrameCache`: a raw uint8 memmap per camera and size, shared by every process that trains on it, so
DDP ranks do not each hold the frames in RAM).

Writing (`export_lerobot`): our demos (any format `vla.dataset.load_demos` reads) as a v3.0 folder, cameras as AV1
video the way LeRobot writes it by default (libsvtav1, yuv420p, g=2, crf=30, preset 12) or as PNG image features.
The folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np

from vla.atomic import write_json_atomic
from vla.features import DatasetError, Demo, FeatureMap, fit_frames

CODEBASE_VERSION = "v3.0"
INFO_PATH, STATS_PATH, TASKS_PATH = "meta/info.json", "meta/stats.json", "meta/tasks.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE, DATA_FILE_MB, VIDEO_FILE_MB = 1000, 100, 200  # LeRobot's defaults
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
IMAGE_PREFIX = "observation.images."
# AV1 as LeRobot 0.4.x writes it by default (lerobot/datasets/video_utils.py: encode_video_frames)
VIDEO_OPTIONS = {"g": "2", "crf": "30", "preset": "12"}


def is_lerobot(path) -> bool:
    return os.path.isdir(str(path)) and os.path.isfile(os.path.join(str(path), INFO_PATH))


# LeRobot's LIBERO layout (openpi's and LeRobot's LIBERO datasets): these two cameras, and no other, are the ones our
# LIBERO reader and the LIBERO env worker call "agentview" and "wrist", so one policy serves either source
LIBERO_CAMERAS = {"observation.images.image": "agentview", "observation.images.wrist_image": "wrist"}


def camera_name(key: str) -> str:
    """'observation.images.wrist' -> 'wrist' (the policy's camera name)."""
    return (key[len(IMAGE_PREFIX):] if key.startswith(IMAGE_PREFIX)
            else key.replace("observation.", "").replace(".", "_"))


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    file += 1
    return (chunk + 1, 0) if file >= CHUNKS_SIZE else (chunk, file)


# --------------------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------------------
def _read_parquet(path: str, what: str, columns=None):
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise DatasetError(f"{path}: {what} file not found")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:  # noqa: BLE001  (pyarrow raises several types for a corrupt file)
        raise DatasetError(f"{path}: not a readable parquet file ({what}): {e}") from e


class LeRobotDir:
    """A LeRobot v3.0 dataset folder: metadata at construction, frames and low-dim arrays on demand."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")
        info_path = os.path.join(self.root, INFO_PATH)
        if not os.path.isfile(info_path):
            raise DatasetError(f"{self.root}: not a LeRobot dataset (no {INFO_PATH})")
        try:
            with open(info_path) as f:
                self.info = json.load(f)
        except ValueError as e:
            raise DatasetError(f"{info_path}: not valid JSON ({e})") from e
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise DatasetError(f"{info_path}: codebase_version {version!r}; this reader reads LeRobot v3.x datasets "
                               f"(convert older ones with LeRobot's convert_dataset_v21_to_v30)")
        for k in ("fps", "features", "total_frames", "total_episodes"):
            if k not in self.info:
                raise DatasetError(f"{info_path}: missing key {k!r}")
        self.fps = float(self.info["fps"])
        self.features: dict = self.info["features"]
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes()
        if len(self.episodes) != int(self.info["total_episodes"]):
            raise DatasetError(f"{self.root}/meta/episodes: {len(self.episodes)} episodes, {INFO_PATH} total_episodes "
                               f"says {self.info['total_episodes']}")

    # ---- metadata
    @property
    def total_frames(self) -> int:
        return int(self.info["total_frames"])

    def stamp_files(self) -> list[str]:
        """The files whose size and mtime key the frame cache: info.json and the episode metadata."""
        return [os.path.join(self.root, INFO_PATH)] + sorted(glob.glob(os.path.join(self.root, "meta/episodes/*/*")))

    def _read_tasks(self) -> list[str]:
        t = _read_parquet(os.path.join(self.root, TASKS_PATH), "tasks")
        meta = json.loads((t.schema.metadata or {}).get(b"pandas", b"{}") or b"{}")
        index_cols = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
        names = t.column_names
        key = next((c for c in index_cols + ["task", "__index_level_0__"] if c in names), None)
        if key is None or "task_index" not in names:
            raise DatasetError(f"{self.root}/{TASKS_PATH}: expected the task strings (pandas index) and a task_index "
                               f"column, got columns {names}")
        tasks = dict(zip(t.column("task_index").to_pylist(), t.column(key).to_pylist()))
        return [tasks.get(i, "") for i in range(max(tasks) + 1 if tasks else 0)]

    def _read_episodes(self) -> list[dict]:
        paths = sorted(glob.glob(os.path.join(self.root, "meta", "episodes", "*", "*.parquet")))
        if not paths:
            raise DatasetError(f"{self.root}/meta/episodes: no episode metadata (*.parquet)")
        rows = []
        for p in paths:
            t = _read_parquet(p, "episode metadata")
            t = t.select([c for c in t.column_names if not c.startswith("stats/")])
            rows += t.to_pylist()
        for k in ("episode_index", "length", "dataset_from_index", "dataset_to_index", "data/chunk_index",
                  "data/file_index"):
            if rows and k not in rows[0]:
                raise DatasetError(f"{paths[0]}: missing column {k!r}")
        return sorted(rows, key=lambda r: r["episode_index"])

    def feature_map(self) -> FeatureMap:
        cams = {camera_name(k): k for k, ft in self.features.items() if ft.get("dtype") in ("video", "image")}
        if set(cams.values()) == set(LIBERO_CAMERAS):
            cams = {LIBERO_CAMERAS[k]: k for k in cams.values()}
        if "observation.state" in self.features:
            state = ("observation.state",)
        else:
            state = tuple(k for k, ft in self.features.items() if k.startswith("observation.")
                          and ft.get("dtype") not in ("video", "image", "string"))
        if not state:
            raise DatasetError(f"{self.root}/{INFO_PATH}: no observation.state feature (features: "
                               f"{sorted(self.features)}); declare the mapping in data.features")
        space = self.info.get("vla_action_space", "eef_delta")  # ours; other writers: deltas of the end effector
        names = self.features.get("action", {}).get("names")
        if isinstance(names, dict):  # LeRobot <= 2.x wrote {"motors": [...]}
            names = next(iter(names.values()), None)
        ok = isinstance(names, list) and len(names) == int(np.prod(self.features.get("action", {}).get("shape", [0])))
        snames = self.features.get(state[0], {}).get("names") if len(state) == 1 else None
        if isinstance(snames, dict):
            snames = next(iter(snames.values()), None)
        s_ok = isinstance(snames, list) and len(snames) == int(np.prod(self.features[state[0]].get("shape", [0])))
        return FeatureMap(cameras=cams, state=state, action="action", action_space=space, fps=self.fps,
                          action_names=tuple(str(n) for n in names) if ok else None,
                          state_names=tuple(str(n) for n in snames) if s_ok else None,
                          arms=tuple(self.info["vla_arms"]) if self.info.get("vla_arms") else None,
                          action_units=tuple(self.info["vla_action_units"]) if self.info.get("vla_action_units")
                          else None)

    def dims(self, fm: FeatureMap) -> dict:
        for k in (fm.action, *fm.state, *fm.cameras.values()):
            if k not in self.features:
                raise DatasetError(f"{self.root}/{INFO_PATH}: no feature {k!r} (features: {sorted(self.features)})")
        state_dim = sum(int(np.prod(self.features[k]["shape"])) for k in fm.state)
        return {"cameras": list(fm.cameras), "state_dim": state_dim,
                "action_dim": int(np.prod(self.features[fm.action]["shape"])), "features": fm}

    def split(self, split: str | None) -> list[dict]:
        """Episodes of a split: info.json's splits when it names a "valid"/"val"/"test" split, else every 10th
        episode is "valid" (the rule for robomimic files without masks)."""
        if split is None:
            return list(self.episodes)
        splits = self.info.get("splits") or {}
        held = next((splits[k] for k in ("valid", "val", "validation", "test") if k in splits), None)
        if held is not None:
            lo, hi = (int(x) for x in str(held).split(":"))
            in_held = {e["episode_index"] for e in self.episodes if lo <= e["episode_index"] < hi}
            return [e for e in self.episodes if (e["episode_index"] in in_held) == (split == "valid")]
        return [e for i, e in enumerate(self.episodes) if (i % 10 == 9) == (split == "valid")]

    # ---- low-dim frames
    def table(self, columns: list[str]):
        """All data files' rows (selected columns + episode_index, index), in global index order; each file's rows
        per episode checked against the episode metadata, the total against info.json."""
        import pyarrow as pa

        cols = list(dict.fromkeys(list(columns) + ["episode_index", "index"]))
        files = sorted({(e["data/chunk_index"], e["data/file_index"]) for e in self.episodes})
        tables = []
        for c, f in files:
            path = os.path.join(self.root, self.info.get("data_path") or DATA_PATH).format(chunk_index=c, file_index=f)
            t = _read_parquet(path, "frame data")
            missing = [k for k in cols if k not in t.column_names]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing} (columns: {t.column_names})")
            t = t.select(cols)
            want = {e["episode_index"]: e["length"] for e in self.episodes
                    if (e["data/chunk_index"], e["data/file_index"]) == (c, f)}
            got = dict(zip(*np.unique(t.column("episode_index").to_numpy(), return_counts=True)))
            for ep, n in want.items():
                if int(got.get(ep, 0)) != int(n):
                    raise DatasetError(f"{path}: episode {ep} has {int(got.get(ep, 0))} frames, meta/episodes says {n}")
            tables.append(t)
        t = pa.concat_tables(tables)
        if t.num_rows != int(self.info["total_frames"]):
            raise DatasetError(f"{self.root}/data: {t.num_rows} frames, {INFO_PATH} total_frames says "
                               f"{self.info['total_frames']}")
        index = t.column("index").to_numpy()
        if not np.array_equal(index, np.arange(len(index))):
            t = t.take(np.argsort(index, kind="stable"))
        return t

    @staticmethod
    def column(t, key: str) -> np.ndarray:
        """A fixed-size or variable list column -> float32 (N, k); a scalar column -> (N, 1)."""
        col = t.column(key).combine_chunks()
        if hasattr(col, "flatten") and str(col.type).startswith(("fixed_size_list", "list", "large_list")):
            n = len(col)
            flat = col.flatten().to_numpy(zero_copy_only=False)
            return flat.reshape(n, -1).astype(np.float32)
        return col.to_numpy(zero_copy_only=False).reshape(len(col), -1).astype(np.float32)

    # ---- images
    def video_path(self, key: str, ep: dict) -> str:
        c, f = ep.get(f"videos/{key}/chunk_index"), ep.get(f"videos/{key}/file_index")
        if c is None or f is None:
            raise DatasetError(f"{self.root}/meta/episodes: episode {ep['episode_index']} "
                               f"has no videos/{key}/chunk_index")
        return os.path.join(self.root, self.info.get("video_path") or VIDEO_PATH).format(
            video_key=key, chunk_index=c, file_index=f)

    def frames(self, key: str, episodes: list[dict], sink) -> None:
        """Decode the frames of `key` for `episodes`, calling sink(episode, uint8 (T, H, W, 3)) once per episode.
        Video: each file is decoded once, in order; an episode's frames are those with from <= t < to."""
        if self.features[key]["dtype"] == "image":
            t = self.table([key])
            for ep in episodes:
                rows = t.column(key).slice(ep["dataset_from_index"], ep["length"]).to_pylist()
                sink(ep, np.stack([_decode_png(r, f"{self.root}/data ({key}, episode {ep['episode_index']})")
                                   for r in rows]))
            return
        by_file: dict[str, list[dict]] = {}
        for ep in episodes:
            by_file.setdefault(self.video_path(key, ep), []).append(ep)
        for path, eps in by_file.items():
            _decode_episodes(path, key, eps, self.fps, sink)


def _decode_png(cell, where: str) -> np.ndarray:
    import cv2

    data = cell.get("bytes") if isinstance(cell, dict) else None
    if not data:
        raise DatasetError(f"{where}: an image cell without bytes (images stored by path are not supported)")
    im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if im is None:
        raise DatasetError(f"{where}: an image cell that is not a decodable PNG/JPEG")
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)


def _decode_episodes(path: str, key: str, eps: list[dict], fps: float, sink) -> None:
    import av

    if not os.path.isfile(path):
        raise DatasetError(f"{path}: video file not found (feature {key!r}, episodes "
                           f"{[e['episode_index'] for e in eps][:8]})")
    eps = sorted(eps, key=lambda e: e[f"videos/{key}/from_timestamp"])
    tol = 0.5 / fps
    try:
        container = av.open(path)
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{path}: not a readable video ({e})") from e
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        i, buf = 0, []
        lo, hi = eps[0][f"videos/{key}/from_timestamp"], eps[0][f"videos/{key}/to_timestamp"]
        if lo > 1.0:  # seek near the first episode wanted (the keyframe before it)
            container.seek(int(max(0.0, lo - 1.0) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            ts = float(frame.pts * stream.time_base)
            while i < len(eps) and ts >= hi - tol:
                _emit(path, key, eps[i], buf, sink)
                i, buf = i + 1, []
                if i < len(eps):
                    lo, hi = eps[i][f"videos/{key}/from_timestamp"], eps[i][f"videos/{key}/to_timestamp"]
            if i >= len(eps):
                break
            if ts >= lo - tol:
                buf.append(frame.to_ndarray(format="rgb24"))
        while i < len(eps):  # the file ended
            _emit(path, key, eps[i], buf, sink)
            i, buf = i + 1, []


def _emit(path, key, ep, frames, sink) -> None:
    if len(frames) != int(ep["length"]):
        raise DatasetError(f"{path}: episode {ep['episode_index']} ({key}) decodes to {len(frames)} frames between "
                           f"{ep[f'videos/{key}/from_timestamp']:.3f} s and {ep[f'videos/{key}/to_timestamp']:.3f} s; "
                           f"meta/episodes says {ep['length']}")
    sink(ep, np.stack(frames))


class FrameCache:
    """Decoded, squared and resized frames of one dataset camera, as a raw uint8 memmap (total_frames, S, S, 3) in
    global frame order, under `cache_dir` (default $VLA_FRAME_CACHE or ~/.cache/vla/frames). Built once, under a
    file lock (concurrent DDP ranks: the first builds, the others wait and map it); complete when `done.json` exists.
    The key covers the dataset's path, its stamp files (size, mtime: LeRobot's info.json and episode metadata), the
    camera, size and fit. `ds`: any frame source with root, total_frames, episodes (dicts with dataset_from_index and
    length), stamp_files() and frames(key, episodes, sink) - a LeRobotDir, or vla.formats.libero_hdf5's files."""

    def __init__(self, ds: LeRobotDir, key: str, size: int, fit: str, cache_dir: str | None = None):
        base = cache_dir or os.environ.get("VLA_FRAME_CACHE") or os.path.expanduser("~/.cache/vla/frames")
        stamp = [os.path.realpath(ds.root), key, size, fit]
        for p in ds.stamp_files():
            st = os.stat(p)
            stamp += [p, st.st_size, st.st_mtime_ns]
        digest = hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:16]
        self.dir = os.path.join(base, f"{os.path.basename(ds.root)}-{digest}")
        self.path = os.path.join(self.dir, f"{key}.u8")
        self.shape = (int(ds.total_frames), size, size, 3)
        self.ds, self.key, self.size, self.fit = ds, key, size, fit

    @property
    def done_path(self) -> str:
        return os.path.join(self.dir, f"{self.key}.done.json")

    def open(self, progress: bool = False) -> np.memmap:
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, f"{self.key}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(self.done_path):
                self._build(progress)
        return np.memmap(self.path, np.uint8, mode="r", shape=self.shape)

    def _build(self, progress: bool) -> None:
        """Written with plain file writes at each episode's offset (not through a writable mapping, whose dirty pages
        would count against this process's memory while it builds)."""
        from tqdm import tqdm

        tmp = self.path + ".tmp"
        row = int(np.prod(self.shape[1:]))
        bar = tqdm(total=self.shape[0], desc=f"decoding {self.key} -> {self.size}px cache", unit="frame",
                   disable=not progress)
        with open(tmp, "wb") as f:
            f.truncate(self.shape[0] * row)

            def sink(ep, frames):
                f.seek(int(ep["dataset_from_index"]) * row)
                f.write(np.ascontiguousarray(fit_frames(frames, self.size, self.fit), np.uint8).tobytes())
                bar.update(len(frames))

            self.ds.frames(self.key, self.ds.episodes, sink)
            f.flush()
            os.fsync(f.fileno())
        bar.close()
        os.replace(tmp, self.path)
        write_json_atomic(self.done_path, {"dataset": self.ds.root, "key": self.key, "shape": list(self.shape),
                                           "fit": self.fit})


def load_lerobot_demos(root: str, split=None, cameras=("agentview", "wrist"), image_size=None, tasks=None,
                       features: FeatureMap | None = None, frame_fit="crop", frame_cache: str | None = None,
                       progress: bool = False) -> list:
    """Demo per episode (vla.dataset.load_demos applies max_demos_per_task across files). With image_size the frames
    come from the on-disk FrameCache (memmap views, not in RAM); without, they are decoded at their recorded size (for
    `vla data show`)."""
    ds = LeRobotDir(root)
    fm = features or ds.feature_map()
    cams = list(fm.cameras) if cameras is None else list(cameras)
    unknown = [c for c in cams if c not in fm.cameras]
    if unknown:
        raise DatasetError(f"{root}: camera(s) {unknown} are not in the data's feature map ({fm.cameras}); map them "
                           f"in data.features.cameras or choose model.cameras")
    ds.dims(fm)
    eps = []
    for ep in ds.split(split):
        task_str = (ep.get("tasks") or [""])[0]
        task = ep.get("vla_task") or task_str
        if tasks is None or task in tasks:
            eps.append((ep, task, fm.instruction or task_str or task))
    t = ds.table([fm.action, *fm.state])
    action = LeRobotDir.column(t, fm.action)
    state = np.concatenate([LeRobotDir.column(t, k) for k in fm.state], axis=1)
    images: dict[str, dict[int, np.ndarray]] = {c: {} for c in cams}
    for c in cams:
        key = fm.cameras[c]
        if image_size:
            mm = FrameCache(ds, key, image_size, frame_fit, frame_cache).open(progress)
            for ep, _, _ in eps:
                a = ep["dataset_from_index"]
                images[c][ep["episode_index"]] = mm[a:a + ep["length"]]
        else:
            ds.frames(key, [ep for ep, _, _ in eps], lambda ep, fr, c=c: images[c].__setitem__(ep["episode_index"], fr))
    demos = []
    for ep, task, instruction in eps:
        a, T = ep["dataset_from_index"], int(ep["length"])
        demos.append(Demo(name=f"{os.path.basename(ds.root)}:episode_{ep['episode_index']}", task=task,
                          instruction=instruction, images={c: images[c][ep["episode_index"]] for c in cams},
                          state=state[a:a + T], actions=action[a:a + T], object_pos=np.zeros((T, 3, 3), np.float32)))
    return demos


# --------------------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------------------
def _stats(x: np.ndarray, axis=0) -> dict:
    x = x.astype(np.float64)
    out = {"min": x.min(axis), "max": x.max(axis), "mean": x.mean(axis), "std": x.std(axis),
           "count": np.array([x.shape[0]])}
    for q in QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = np.quantile(x, q, axis=axis)
    return out


def _image_stats(frames: np.ndarray) -> dict:
    """uint8 (T, H, W, 3) -> LeRobot's image stats: per channel, in [0, 1], shape (3, 1, 1)."""
    x = frames.reshape(-1, 3)[:: max(1, frames.shape[0] * frames.shape[1] * frames.shape[2] // 200_000)] / 255.0
    s = _stats(x)  # its count is of the sampled pixels; LeRobot counts frames
    return {k: v.reshape(3, 1, 1) for k, v in s.items() if k != "count"} | {"count": np.array([frames.shape[0]])}


def _merge_stats(parts: list[dict]) -> dict:
    """Episode stats -> dataset stats: min/max exact, mean/std pooled by count, quantiles count-weighted (as LeRobot
    aggregates them)."""
    n = np.array([float(p["count"][0]) for p in parts])
    w = n / n.sum()
    mean = sum(wi * p["mean"] for wi, p in zip(w, parts))
    var = sum(wi * (p["std"] ** 2 + (p["mean"] - mean) ** 2) for wi, p in zip(w, parts))
    out = {"min": np.min([p["min"] for p in parts], 0), "max": np.max([p["max"] for p in parts], 0), "mean": mean,
           "std": np.sqrt(var), "count": np.array([int(n.sum())])}
    for k in parts[0]:
        if k.startswith("q"):
            out[k] = sum(wi * p[k] for wi, p in zip(w, parts))
    return out


def _jsonable(stats: dict) -> dict:
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}


class _VideoFiles:
    """One camera's episodes appended to AV1 files (a new file past VIDEO_FILE_MB), pts continuing across
    episodes so each episode is a [from, to) time range of its file."""

    def __init__(self, root: str, key: str, fps: float, crf: int):
        self.root, self.key, self.fps, self.crf = root, key, fps, crf
        self.chunk, self.file, self.container, self.stream, self.frames, self.bytes = 0, 0, None, None, 0, 0

    def _open(self, h: int, w: int) -> None:
        import av

        path = os.path.join(self.root, VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk,
                                                         file_index=self.file))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.container = av.open(path, "w")
        self.stream = self.container.add_stream("libsvtav1", rate=int(round(self.fps)),
                                                options={**VIDEO_OPTIONS, "crf": str(self.crf)})
        self.stream.pix_fmt, self.stream.width, self.stream.height = "yuv420p", w, h
        self.frames = self.bytes = 0

    def add(self, frames: np.ndarray) -> dict:
        import av

        if self.container is not None and self.bytes / 1e6 >= VIDEO_FILE_MB:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file)
        if self.container is None:
            self._open(frames.shape[1], frames.shape[2])
        start = self.frames
        for im in frames:
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(im), format="rgb24")
            f.pts = self.frames
            for p in self.stream.encode(f):
                self.bytes += p.size
                self.container.mux(p)
            self.frames += 1
        return {f"videos/{self.key}/chunk_index": self.chunk, f"videos/{self.key}/file_index": self.file,
                f"videos/{self.key}/from_timestamp": start / self.fps,
                f"videos/{self.key}/to_timestamp": self.frames / self.fps}

    def close(self) -> None:
        if self.container is None:
            return
        for p in self.stream.encode():
            self.container.mux(p)
        self.container.close()
        self.container = None

    def info(self) -> dict:
        return {"video.height": self.stream.height if self.stream else None,
                "video.width": self.stream.width if self.stream else None, "video.codec": "av1",
                "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": int(round(self.fps)),
                "video.channels": 3, "has_audio": False}


def _tasks_table(tasks: list[str]):
    """meta/tasks.parquet as pandas writes DataFrame({"task_index": ...}, index=tasks).to_parquet(): the task strings
    are the (unnamed) index, so LeRobot's pd.read_parquet gives them back as the index."""
    import pyarrow as pa

    t = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                  "__index_level_0__": pa.array(tasks, pa.string())})
    meta = {"index_columns": ["__index_level_0__"],
            "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                                "metadata": {"encoding": "UTF-8"}}],
            "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                         "numpy_type": "int64", "metadata": None},
                        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                         "numpy_type": "object", "metadata": None}],
            "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    return t.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})


STATE_NAMES = {9: ["eef_x", "eef_y", "eef_z", "eef_qx", "eef_qy", "eef_qz", "eef_qw", "gripper_0", "gripper_1"]}
ACTION_NAMES = {7: ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]}


@dataclass
class ExportReport:
    path: str
    episodes: int
    frames: int
    cameras: list
    video: bool
    bytes: int


def export_lerobot(demos: list, out: str, fps: float, video: bool = True, robot_type: str | None = None,
                   crf: int = 30, overwrite: bool = False, features: FeatureMap | None = None,
                   progress: bool = False) -> ExportReport:
    """Write `demos` (vla.dataset.Demo, frames at their stored size) as a LeRobot v3.0 folder at `out`.
    Cameras become `observation.images.<camera>` (AV1 video, or PNG image features with video=False), the state
    `observation.state`, the actions `action`; the instruction is the episode's task string; our task name goes
    to the episode metadata column `vla_task`. `features`: the source's feature map (its action space, action names
    and arm layout go to info.json). Written to `out`.tmp, renamed when complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    if not demos:
        raise ValueError("export: no demos to write")
    out = str(out).rstrip("/")
    if os.path.exists(out):
        if not overwrite:
            raise FileExistsError(f"{out}: exists; pass --overwrite to replace it")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "meta"), exist_ok=True)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only (it prints its banner to stderr otherwise)
    cams = list(demos[0].images)
    S, D = demos[0].state.shape[1], demos[0].actions.shape[1]
    for d in demos:
        if d.state.shape[1] != S or d.actions.shape[1] != D or list(d.images) != cams:
            raise ValueError(f"export: {d.name} has state {d.state.shape[1]}, actions {d.actions.shape[1]}, cameras "
                             f"{list(d.images)}; the first demo has {S}, {D}, {cams}")
    src = features
    action_space = src.action_space if src else "eef_delta"
    features = {}
    for c in cams:
        h, w = demos[0].images[c].shape[1:3]
        ft = {"dtype": "video" if video else "image", "shape": [h, w, 3], "names": ["height", "width", "channels"]}
        features[IMAGE_PREFIX + c] = ft
    features["observation.state"] = {"dtype": "float32", "shape": [S], "names": list(src.state_names)
                                     if src and src.state_names and len(src.state_names) == S else STATE_NAMES.get(S)}
    names = list(src.action_names) if src and src.action_names else (ACTION_NAMES.get(D) if action_space == "eef_delta"
                                                                    else None)
    features["action"] = {"dtype": "float32", "shape": [D], "names": names}
    for k in DEFAULT_FEATURES:
        features[k] = {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}
    tasks: list[str] = []
    videos = {c: _VideoFiles(tmp, IMAGE_PREFIX + c, fps, crf) for c in cams} if video else {}
    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([(IMAGE_PREFIX + c, img_type) for c in cams if not video]
                       + [("observation.state", pa.list_(pa.float32(), S)), ("action", pa.list_(pa.float32(), D))]
                       + [(k, pa.float32() if k == "timestamp" else pa.int64()) for k in DEFAULT_FEATURES])
    data_chunk, data_file, writer, written = 0, 0, None, 0
    episodes, ep_stats, index = [], [], 0
    import cv2

    try:
        for e, d in enumerate(tqdm(demos, desc="export", unit="episode", disable=not progress)):
            T = len(d)
            if d.instruction not in tasks:
                tasks.append(d.instruction)
            ti = tasks.index(d.instruction)
            if writer is not None and written / 1e6 >= DATA_FILE_MB:
                writer.close()
                writer, written = None, 0
                data_chunk, data_file = _next_file(data_chunk, data_file)
            if writer is None:
                path = os.path.join(tmp, DATA_PATH.format(chunk_index=data_chunk, file_index=data_file))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                writer = pq.ParquetWriter(path, schema, compression="snappy")
            cols = {}
            for c in cams if not video else []:
                png = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in d.images[c]]
                written += sum(len(p) for p in png)
                cols[IMAGE_PREFIX + c] = pa.array([{"bytes": p, "path": None} for p in png], img_type)
            cols["observation.state"] = pa.FixedSizeListArray.from_arrays(
                pa.array(d.state.astype(np.float32).ravel()), S)
            cols["action"] = pa.FixedSizeListArray.from_arrays(pa.array(d.actions.astype(np.float32).ravel()), D)
            cols["timestamp"] = pa.array((np.arange(T) / fps).astype(np.float32))
            cols["frame_index"] = pa.array(np.arange(T, dtype=np.int64))
            cols["episode_index"] = pa.array(np.full(T, e, np.int64))
            cols["index"] = pa.array(np.arange(index, index + T, dtype=np.int64))
            cols["task_index"] = pa.array(np.full(T, ti, np.int64))
            writer.write_table(pa.table(cols, schema=schema))
            written += T * (S + D) * 4
            meta = {"episode_index": e, "tasks": [d.instruction], "length": T, "data/chunk_index": data_chunk,
                    "data/file_index": data_file, "dataset_from_index": index, "dataset_to_index": index + T}
            for c, vf in videos.items():
                meta.update(vf.add(np.asarray(d.images[c])))
            meta.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, "vla_task": d.task})
            st = {"observation.state": _stats(d.state), "action": _stats(d.actions)}
            for c in cams:
                st[IMAGE_PREFIX + c] = _image_stats(np.asarray(d.images[c]))
            for k, arr in (("timestamp", np.arange(T)[:, None] / fps), ("frame_index", np.arange(T)[:, None]),
                           ("episode_index", np.full((T, 1), e)), ("index", np.arange(index, index + T)[:, None]),
                           ("task_index", np.full((T, 1), ti))):
                st[k] = _stats(arr)
            ep_stats.append(st)
            for f, s in st.items():
                for k, v in s.items():
                    meta[f"stats/{f}/{k}"] = np.asarray(v, np.float64).ravel().tolist()
            episodes.append(meta)
            index += T
    finally:
        if writer is not None:
            writer.close()
        for vf in videos.values():
            vf.close()
    for c, vf in videos.items():
        features[IMAGE_PREFIX + c]["info"] = vf.info()
    ep_path = os.path.join(tmp, EPISODES_PATH.format(chunk_index=0, file_index=0))
    os.makedirs(os.path.dirname(ep_path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episodes), ep_path)
    pq.write_table(_tasks_table(tasks), os.path.join(tmp, TASKS_PATH))
    stats = {f: _merge_stats([s[f] for s in ep_stats]) for f in ep_stats[0]}
    write_json_atomic(os.path.join(tmp, STATS_PATH), _jsonable(stats))
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": len(demos),
            "total_frames": index, "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB,
            "fps": int(round(fps)) if float(fps).is_integer() else fps, "splits": {"train": f"0:{len(demos)}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH if video else None, "features": features,
            "vla_action_space": action_space, **({"vla_arms": [dict(a) for a in src.arms]} if src and src.arms else {}),
            **({"vla_action_units": list(src.action_units)} if src and src.action_units else {})}
    write_json_atomic(os.path.join(tmp, INFO_PATH), info)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "**", "*"), recursive=True) if os.path.isfile(p))
    return ExportReport(path=out, episodes=len(demos), frames=index, cameras=cams, video=video, bytes=size)
