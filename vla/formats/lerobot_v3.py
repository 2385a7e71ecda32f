"""LeRobot dataset v3.0 folders (meta/info.json): the reader behind the registry; vla.lerobot does the work."""

from __future__ import annotations

from vla.features import FeatureMap
from vla.formats.base import LoadOptions, Reader
from vla.lerobot import INFO_PATH, LeRobotDir, is_lerobot, load_lerobot_demos


class LeRobotV3(Reader):
    name = "lerobot"
    holds = f"a LeRobot v3 dataset folder (with {INFO_PATH})"

    def sniff(self, path: str) -> bool:
        return is_lerobot(path)

    def feature_map(self, path: str) -> FeatureMap:
        return LeRobotDir(path).feature_map()

    def dims(self, path: str, features: FeatureMap | None = None) -> dict:
        ds = LeRobotDir(path)
        return ds.dims(features or ds.feature_map())

    def load(self, path: str, opts: LoadOptions, take) -> list:
        got = load_lerobot_demos(path, opts.split, opts.cameras, opts.image_size, opts.tasks, opts.features,
                                 opts.frame_fit, opts.frame_cache, opts.progress)
        return [d for d in got if take(d.task)]

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
