"""Dataset formats: one reader per format behind one interface (vla.formats.base.Reader), chosen by `detect`.

    detect(path) -> Reader      the first registered reader whose sniff claims the path (a file or a folder); a path
                                no reader claims is one DatasetError (`unclaimed`) ending with `forms()`, what a
                                dataset path may be
    READERS                     in the order they are asked:
        lerobot   LeRobot v3 folder (meta/info.json)                               vla.formats.lerobot_v3
        libero    LIBERO native HDF5 (<task>_demo.hdf5), or a folder of them       vla.formats.libero_hdf5
        hdf5      this project's / robomimic's HDF5, or a folder of them           vla.formats.hdf5
    register(reader, first=False)   add a format (asked first, or before the catch-all hdf5 reader)

vla.dataset (load_demos, peek_dims, describe) reads every format through here; the feature map (vla.features) and
the on-disk frame cache (vla.lerobot.FrameCache) are shared by the readers. Writers live apart (vla.dataset.DemoWriter,
vla.lerobot.export_lerobot).
"""

from __future__ import annotations

import os

from vla.features import DatasetError
from vla.formats.base import LoadOptions, Reader, hdf5_files, is_hdf5
from vla.formats.hdf5 import OursHDF5
from vla.formats.lerobot_v3 import LeRobotV3
from vla.formats.libero_hdf5 import LiberoHDF5

READERS: list[Reader] = [LeRobotV3(), LiberoHDF5(), OursHDF5()]

__all__ = ["DATASET_FORMS", "READERS", "LoadOptions", "Reader", "detect", "forms", "register", "unclaimed"]


def register(reader: Reader, first: bool = False) -> None:
    """Add a reader: asked first (`first`), else just before the last (the catch-all HDF5 reader)."""
    if any(r.name == reader.name for r in READERS):
        raise ValueError(f"format {reader.name!r} is already registered")
    READERS.insert(0 if first else max(0, len(READERS) - 1), reader)


def forms() -> str:
    """What a dataset path may be, one phrase per registered reader (the errors below end with it)."""
    holds = [r.holds for r in READERS]
    return holds[0] if len(holds) == 1 else ", ".join(holds[:-1]) + ", or " + holds[-1]


DATASET_FORMS = forms()


def unclaimed(path: str) -> DatasetError:
    """The one error for a path that no reader claims: why, when it is plain, and what a dataset path must hold."""
    why = ""
    if os.path.isfile(path) and not is_hdf5(path):
        why = "not an HDF5 file"
    elif os.path.isdir(path):
        h5 = hdf5_files(path)
        why = (f"a folder whose {len(h5)} HDF5 files are not all of one layout" if h5
               else "a folder with neither meta/info.json nor *.hdf5 / *.h5 files")
    return DatasetError(f"{path}: {why or 'not a dataset layout this project reads'}; expected {forms()}")


def detect(path) -> Reader:
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: dataset file or folder not found; expected {forms()}")
    for reader in READERS:
        if reader.sniff(path):
            return reader
    raise unclaimed(path)
