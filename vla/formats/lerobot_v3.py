"""LeRobot dataset v3.0 in a local folder, read with pyarrow and PyAV (no LeRobot import: no LeRobot release installs
next to Python 3.11 + torch 2.13 + transformers 5; docs/ARCHITECTURE.md "Data"). The writer is
vla.formats.lerobot_v3_writer; the layout below is both's.

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
string; fps). Frames are decoded once per video file in order; with an image size they go through the shared on-disk
FrameCache (vla.formats.frames), made square (`frame_fit`) and resized.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from vla.features import DatasetError, Demo, FeatureMap
from vla.formats.base import LoadOptions, Reader, check_cameras
from vla.formats.frames import FrameCache

CODEBASE_VERSION = "v3.0"
INFO_PATH, STATS_PATH, TASKS_PATH = "meta/info.json", "meta/stats.json", "meta/tasks.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE, DATA_FILE_MB, VIDEO_FILE_MB = 1000, 100, 200  # LeRobot's defaults
DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
IMAGE_PREFIX = "observation.images."

# LeRobot's LIBERO layout (openpi's and LeRobot's LIBERO datasets): these two cameras, and no other, are the ones our
# LIBERO reader and the LIBERO env worker call "agentview" and "wrist", so one policy serves either source
LIBERO_CAMERAS = {"observation.images.image": "agentview", "observation.images.wrist_image": "wrist"}


def is_lerobot(path) -> bool:
    return os.path.isdir(str(path)) and os.path.isfile(os.path.join(str(path), INFO_PATH))


def camera_name(key: str) -> str:
    """'observation.images.wrist' -> 'wrist' (the policy's camera name)."""
    return (key[len(IMAGE_PREFIX):] if key.startswith(IMAGE_PREFIX)
            else key.replace("observation.", "").replace(".", "_"))


def next_file(chunk: int, file: int) -> tuple[int, int]:
    """The (chunk, file) indices after these: CHUNKS_SIZE files per chunk."""
    file += 1
    return (chunk + 1, 0) if file >= CHUNKS_SIZE else (chunk, file)


class LeRobotV3(Reader):
    """The registry's reader for LeRobot v3 folders (vla.formats.READERS)."""

    name = "lerobot"
    holds = f"a LeRobot v3 dataset folder (with {INFO_PATH})"

    def sniff(self, path: str) -> bool:
        return is_lerobot(path)

    def feature_map(self, path: str) -> FeatureMap:
        return LeRobotDir(path).feature_map()

    def dims(self, path: str, features: FeatureMap | None = None) -> dict:
        ds = LeRobotDir(path)
        return ds.dims(features or ds.feature_map())

    def load(self, path: str, opts: LoadOptions, take) -> list[Demo]:
        """A Demo per episode. With an image size the frames come from the on-disk FrameCache (memmap views, not in
        RAM); without, they are decoded at their recorded size (for `vla data show`)."""
        ds = LeRobotDir(path)
        fm = opts.features or ds.feature_map()
        cams = check_cameras(path, fm, opts.cameras)
        ds.dims(fm)
        eps = []
        for ep in ds.split(opts.split):
            task_str = (ep.get("tasks") or [""])[0]
            task = ep.get("vla_task") or task_str
            if (opts.tasks is None or task in opts.tasks) and take(task):
                eps.append((ep, task, fm.instruction or task_str or task))
        t = ds.table([fm.action, *fm.state])
        action = LeRobotDir.column(t, fm.action)
        state = np.concatenate([LeRobotDir.column(t, k) for k in fm.state], axis=1)
        images: dict[str, dict[int, np.ndarray]] = {c: {} for c in cams}
        for c in cams:
            key = fm.cameras[c]
            if opts.image_size:
                mm = FrameCache(ds, key, opts.image_size, opts.frame_fit, opts.frame_cache).open(opts.progress)
                for ep, _, _ in eps:
                    a = ep["dataset_from_index"]
                    images[c][ep["episode_index"]] = mm[a:a + ep["length"]]
            else:
                ds.frames(key, [ep for ep, _, _ in eps],
                          lambda ep, fr, c=c: images[c].__setitem__(ep["episode_index"], fr))
        demos = []
        for ep, task, instruction in eps:
            a, T = ep["dataset_from_index"], int(ep["length"])
            demos.append(Demo(name=f"{os.path.basename(ds.root)}:episode_{ep['episode_index']}", task=task,
                              instruction=instruction, images={c: images[c][ep["episode_index"]] for c in cams},
                              state=state[a:a + T], actions=action[a:a + T],
                              object_pos=np.zeros((T, 3, 3), np.float32)))
        return demos

    def describe(self, path: str, features: FeatureMap | None = None) -> tuple[FeatureMap, dict, str]:
        ds = LeRobotDir(path)
        fm = features or ds.feature_map()
        ds.dims(fm)  # every mapped key exists
        feats = {}
        for cam, key in fm.cameras.items():
            ft = ds.features[key]
            feats[f"camera.{cam}"] = {"key": key, "shape": list(ft["shape"]), "dtype": "uint8",
                                      "stored_as": ft["dtype"], **({"codec": ft["info"].get("video.codec")}
                                                                   if "info" in ft else {})}
        for key in fm.state + (fm.action,):
            ft = ds.features[key]
            feats["action" if key == fm.action else f"state.{key}"] = {
                "key": key, "shape": list(ft["shape"]), "dtype": ft["dtype"], "names": ft.get("names"),
                **({"space": fm.action_space} if key == fm.action else {})}
        return fm, feats, f"lerobot/{ds.info['codebase_version']}"


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
