"""This project's HDF5 ("vla-stack/1": obs/state) and robomimic's released key layout: one file, or a folder of such
files (read in name order). The reading itself is vla.dataset's (`_load_hdf5_file`, `_hdf5_dims`, `_describe_hdf5`),
next to the writer of the same layout."""

from __future__ import annotations

import os

from vla.features import FeatureMap
from vla.formats.base import LoadOptions, Reader, hdf5_files, is_hdf5, open_hdf5
from vla.formats.libero_hdf5 import is_libero_file


def is_ours_or_robomimic(path: str) -> bool:
    """An HDF5 file that is not LIBERO's native layout (which the LIBERO reader claims first)."""
    return is_hdf5(path) and not is_libero_file(path)


class OursHDF5(Reader):
    name = "hdf5"
    holds = "an HDF5 file in this project's or robomimic's layout (data/demo_<i>/obs, actions) or a folder of them"

    def sniff(self, path: str) -> bool:
        files = hdf5_files(path) if os.path.isdir(path) else [path]
        return bool(files) and all(is_ours_or_robomimic(p) for p in files)

    def files(self, path: str) -> list[str]:
        return hdf5_files(path) if os.path.isdir(path) else [path]

    def feature_map(self, path: str) -> FeatureMap:
        first = self.files(path)[0]
        with open_hdf5(first) as f:
            return FeatureMap.detect(f, first)

    def dims(self, path: str, features: FeatureMap | None = None) -> dict:
        from vla.dataset import _hdf5_dims

        return _hdf5_dims(self.files(path)[0], features)

    def load(self, path: str, opts: LoadOptions, take) -> list:
        from vla.dataset import _load_hdf5_file

        return [d for p in self.files(path) for d in _load_hdf5_file(p, opts, take)]

    def describe(self, path: str, features: FeatureMap | None = None) -> tuple[FeatureMap, dict, str]:
        from vla.dataset import _describe_hdf5

        return _describe_hdf5(self.files(path)[0], features)
