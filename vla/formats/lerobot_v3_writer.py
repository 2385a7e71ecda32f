"""Demos (any format vla.formats.load_demos reads) written as a LeRobot v3.0 folder (the layout in
vla.formats.lerobot_v3's docstring): cameras as AV1 video the way LeRobot writes it by default (libsvtav1, yuv420p,
g=2, crf=30, preset 12) or as PNG image features. The folder is written under a temporary name and renamed when
complete.

    export_lerobot(demos, out, fps)   the steps, in order:
        _check_demos        every demo has the first one's cameras, state and action sizes
        _features           info.json's features (names from the source's feature map, else this project's)
        _EpisodeWriter      per episode: the frame rows (data parquet, a new file past DATA_FILE_MB), the video
                            (_VideoFiles, a new file past VIDEO_FILE_MB), its metadata row and its statistics
        _write_meta         meta/episodes, meta/tasks.parquet, meta/stats.json, meta/info.json
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np

from vla.atomic import write_json_atomic
from vla.features import ACTION_NAMES, STATE_NAMES, Demo, FeatureMap
from vla.formats.lerobot_v3 import (CHUNKS_SIZE, CODEBASE_VERSION, DATA_FILE_MB, DATA_PATH, DEFAULT_FEATURES,
                                    EPISODES_PATH, IMAGE_PREFIX, INFO_PATH, STATS_PATH, TASKS_PATH, VIDEO_FILE_MB,
                                    VIDEO_PATH, next_file)
from vla.jsonio import jsonable
from vla.stats import feature_stats, image_stats, merge_stats

# AV1 as LeRobot 0.4.x writes it by default (lerobot/datasets/video_utils.py: encode_video_frames)
VIDEO_OPTIONS = {"g": "2", "crf": "30", "preset": "12"}


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
    """Write `demos` (vla.features.Demo, frames at their stored size) as a LeRobot v3.0 folder at `out`.
    Cameras become `observation.images.<camera>` (AV1 video, or PNG image features with video=False), the state
    `observation.state`, the actions `action`; the instruction is the episode's task string; our task name goes
    to the episode metadata column `vla_task`. `features`: the source's feature map (its action space, action names
    and arm layout go to info.json). Written to `out`.tmp, renamed when complete."""
    from tqdm import tqdm

    if not demos:
        raise ValueError("export: no demos to write")
    out = str(out).rstrip("/")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out}: exists; pass --overwrite to replace it")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "meta"), exist_ok=True)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only (it prints its banner to stderr otherwise)
    cams, S, D = _check_demos(demos)
    feats = _features(demos[0], cams, S, D, video, features)
    writer = _EpisodeWriter(tmp, cams, S, D, fps, video, crf)
    try:
        for d in tqdm(demos, desc="export", unit="episode", disable=not progress):
            writer.add(d)
    finally:
        writer.close()
    for c, vf in writer.videos.items():
        feats[IMAGE_PREFIX + c]["info"] = vf.info()
    _write_meta(tmp, writer, feats, fps, robot_type, video, features)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "**", "*"), recursive=True) if os.path.isfile(p))
    return ExportReport(path=out, episodes=len(demos), frames=writer.index, cameras=cams, video=video, bytes=size)


def _check_demos(demos: list[Demo]) -> tuple[list[str], int, int]:
    """(cameras, state size, action size) of the first demo; every other demo must have the same."""
    cams = list(demos[0].images)
    S, D = demos[0].state.shape[1], demos[0].actions.shape[1]
    for d in demos:
        if d.state.shape[1] != S or d.actions.shape[1] != D or list(d.images) != cams:
            raise ValueError(f"export: {d.name} has state {d.state.shape[1]}, actions {d.actions.shape[1]}, cameras "
                             f"{list(d.images)}; the first demo has {S}, {D}, {cams}")
    return cams, S, D


def _features(first: Demo, cams: list[str], S: int, D: int, video: bool, src: FeatureMap | None) -> dict:
    """info.json's features. Per-dim names come from the source's feature map; without them a 9-dim state and a
    7-dim eef_delta action get this project's names (vla.features.STATE_NAMES, ACTION_NAMES), other sizes none."""
    action_space = src.action_space if src else "eef_delta"
    features = {}
    for c in cams:
        h, w = first.images[c].shape[1:3]
        features[IMAGE_PREFIX + c] = {"dtype": "video" if video else "image", "shape": [h, w, 3],
                                      "names": ["height", "width", "channels"]}
    if src and src.state_names and len(src.state_names) == S:
        state_names = list(src.state_names)
    else:
        state_names = list(STATE_NAMES) if S == len(STATE_NAMES) else None
    if src and src.action_names:
        action_names = list(src.action_names)
    else:
        action_names = list(ACTION_NAMES) if action_space == "eef_delta" and D == len(ACTION_NAMES) else None
    features["observation.state"] = {"dtype": "float32", "shape": [S], "names": state_names}
    features["action"] = {"dtype": "float32", "shape": [D], "names": action_names}
    for k in DEFAULT_FEATURES:
        features[k] = {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}
    return features


class _EpisodeWriter:
    """Episodes appended one by one: their frame rows to the data parquet files, their frames to the video files
    (or PNG cells of the rows), their metadata rows and statistics kept for _write_meta."""

    def __init__(self, root: str, cams: list[str], S: int, D: int, fps: float, video: bool, crf: int):
        import pyarrow as pa

        self.root, self.cams, self.S, self.D, self.fps, self.video = root, cams, S, D, fps, video
        self.videos = {c: _VideoFiles(root, IMAGE_PREFIX + c, fps, crf) for c in cams} if video else {}
        self.img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        self.schema = pa.schema([(IMAGE_PREFIX + c, self.img_type) for c in cams if not video]
                                + [("observation.state", pa.list_(pa.float32(), S)),
                                   ("action", pa.list_(pa.float32(), D))]
                                + [(k, pa.float32() if k == "timestamp" else pa.int64()) for k in DEFAULT_FEATURES])
        self.tasks: list[str] = []
        self.episodes: list[dict] = []  # meta/episodes rows
        self.ep_stats: list[dict] = []  # per episode: feature -> stats
        self.index = 0  # global frame index of the next episode's first frame
        self.chunk, self.file, self.parquet, self.written = 0, 0, None, 0  # data file; bytes written to it

    def add(self, d: Demo) -> None:
        e, T = len(self.episodes), len(d)
        if d.instruction not in self.tasks:
            self.tasks.append(d.instruction)
        ti = self.tasks.index(d.instruction)
        self._data_file()
        self.parquet.write_table(self._rows(d, e, ti))
        self.written += T * (self.S + self.D) * 4
        meta = {"episode_index": e, "tasks": [d.instruction], "length": T, "data/chunk_index": self.chunk,
                "data/file_index": self.file, "dataset_from_index": self.index, "dataset_to_index": self.index + T}
        for c, vf in self.videos.items():
            meta.update(vf.add(np.asarray(d.images[c])))
        meta.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, "vla_task": d.task})
        st = self._stats(d, e, ti)
        self.ep_stats.append(st)
        for f, s in st.items():
            for k, v in s.items():
                meta[f"stats/{f}/{k}"] = np.asarray(v, np.float64).ravel().tolist()
        self.episodes.append(meta)
        self.index += T

    def _data_file(self) -> None:
        """The data parquet file the next episode goes to: a new one once this one holds DATA_FILE_MB."""
        import pyarrow.parquet as pq

        if self.parquet is not None and self.written / 1e6 >= DATA_FILE_MB:
            self.parquet.close()
            self.parquet, self.written = None, 0
            self.chunk, self.file = next_file(self.chunk, self.file)
        if self.parquet is None:
            path = os.path.join(self.root, DATA_PATH.format(chunk_index=self.chunk, file_index=self.file))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.parquet = pq.ParquetWriter(path, self.schema, compression="snappy")

    def _rows(self, d: Demo, e: int, ti: int):
        """One episode's frame rows: PNG cells (image features), state, action and the default features."""
        import cv2
        import pyarrow as pa

        T = len(d)
        cols = {}
        for c in self.cams if not self.video else []:
            png = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in d.images[c]]
            self.written += sum(len(p) for p in png)
            cols[IMAGE_PREFIX + c] = pa.array([{"bytes": p, "path": None} for p in png], self.img_type)
        cols["observation.state"] = pa.FixedSizeListArray.from_arrays(
            pa.array(d.state.astype(np.float32).ravel()), self.S)
        cols["action"] = pa.FixedSizeListArray.from_arrays(pa.array(d.actions.astype(np.float32).ravel()), self.D)
        cols["timestamp"] = pa.array((np.arange(T) / self.fps).astype(np.float32))
        cols["frame_index"] = pa.array(np.arange(T, dtype=np.int64))
        cols["episode_index"] = pa.array(np.full(T, e, np.int64))
        cols["index"] = pa.array(np.arange(self.index, self.index + T, dtype=np.int64))
        cols["task_index"] = pa.array(np.full(T, ti, np.int64))
        return pa.table(cols, schema=self.schema)

    def _stats(self, d: Demo, e: int, ti: int) -> dict:
        """LeRobot's per-episode statistics of every feature (the default ones included)."""
        T = len(d)
        st = {"observation.state": feature_stats(d.state), "action": feature_stats(d.actions)}
        for c in self.cams:
            st[IMAGE_PREFIX + c] = image_stats(np.asarray(d.images[c]))
        for k, arr in (("timestamp", np.arange(T)[:, None] / self.fps), ("frame_index", np.arange(T)[:, None]),
                       ("episode_index", np.full((T, 1), e)),
                       ("index", np.arange(self.index, self.index + T)[:, None]),
                       ("task_index", np.full((T, 1), ti))):
            st[k] = feature_stats(arr)
        return st

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        for vf in self.videos.values():
            vf.close()


def _write_meta(root: str, w: _EpisodeWriter, features: dict, fps: float, robot_type: str | None, video: bool,
                src: FeatureMap | None) -> None:
    """meta/episodes, meta/tasks.parquet, meta/stats.json (the episodes' stats merged) and meta/info.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ep_path = os.path.join(root, EPISODES_PATH.format(chunk_index=0, file_index=0))
    os.makedirs(os.path.dirname(ep_path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(w.episodes), ep_path)
    pq.write_table(_tasks_table(w.tasks), os.path.join(root, TASKS_PATH))
    stats = {f: merge_stats([s[f] for s in w.ep_stats]) for f in w.ep_stats[0]}
    write_json_atomic(os.path.join(root, STATS_PATH), jsonable(stats))
    n = len(w.episodes)
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": n,
            "total_frames": w.index, "total_tasks": len(w.tasks), "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB,
            "fps": int(round(fps)) if float(fps).is_integer() else fps, "splits": {"train": f"0:{n}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH if video else None, "features": features,
            "vla_action_space": src.action_space if src else "eef_delta",
            **({"vla_arms": [dict(a) for a in src.arms]} if src and src.arms else {}),
            **({"vla_action_units": list(src.action_units)} if src and src.action_units else {})}
    write_json_atomic(os.path.join(root, INFO_PATH), info)


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
            self.chunk, self.file = next_file(self.chunk, self.file)
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
