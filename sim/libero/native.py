"""LIBERO's native HDF5 demo layout (the layout of LIBERO's released datasets, written by its `create_dataset.py`).

One file per task, `<task_name>_demo.hdf5`:

    data                              attrs: env_name, problem_info (JSON: problem_name, domain_name,
                                             language_instruction), env_args (JSON: type, env_name, problem_name,
                                             bddl_file, env_kwargs), bddl_file_name, bddl_file_content,
                                             macros_image_convention ("opengl"), num_demos, total
      demo_<i>                        attrs: num_samples, init_state (= states[0]), model_file (MJCF xml)
        obs/agentview_rgb             (T, H, W, 3) uint8, as rendered (upside down: OpenGL convention)
        obs/eye_in_hand_rgb           (T, H, W, 3) uint8, as rendered
        obs/ee_pos                    (T, 3)  end-effector position
        obs/ee_ori                    (T, 3)  end-effector orientation, axis-angle
        obs/ee_states                 (T, 6)  ee_pos + ee_ori
        obs/gripper_states            (T, 2)  finger joint positions
        obs/joint_states              (T, 7)  arm joint positions
        actions                       (T, 7)  OSC_POSE delta + gripper, in [-1, 1]
        rewards, dones                (T,) uint8
        states                        (T, S)  env.sim.get_state().flatten() before each action
        robot_states                  (T, 9)  gripper qpos 2 + eef pos 3 + eef quat 4 (env.get_robot_state_vector)

Row t holds the observation and state the action of row t was chosen from. Demo groups count from 0 (`demo_0`), as
in the released files. The file is written under a temporary name (`<name>.tmp`) and renamed when closed; the
attrs `num_demos` and `total` are kept current after every demo, and closing (also on an exception) renames the
file, so an interrupted collection keeps the demos it finished. h5py only: no LIBERO, no robosuite import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

IMAGE_CONVENTION = "opengl"
OBS_KEYS = ("agentview_rgb", "eye_in_hand_rgb", "ee_pos", "ee_ori", "ee_states", "gripper_states", "joint_states")
DEMO_KEYS = ("actions", "rewards", "dones", "states", "robot_states")
DATA_ATTRS = ("env_name", "problem_info", "env_args", "bddl_file_name", "bddl_file_content",
              "macros_image_convention", "num_demos", "total")


@dataclass
class DemoBuffer:
    """One demonstration, appended step by step (`add`), then written with `NativeDemoWriter.write_demo`."""

    agentview_rgb: list = field(default_factory=list)  # (H, W, 3) uint8 each
    eye_in_hand_rgb: list = field(default_factory=list)
    ee_pos: list = field(default_factory=list)  # (3,)
    ee_ori: list = field(default_factory=list)  # (3,) axis-angle
    gripper_states: list = field(default_factory=list)  # (2,)
    joint_states: list = field(default_factory=list)  # (7,)
    actions: list = field(default_factory=list)  # (7,)
    rewards: list = field(default_factory=list)
    dones: list = field(default_factory=list)
    states: list = field(default_factory=list)  # (S,)
    robot_states: list = field(default_factory=list)  # (9,)
    model_file: str = ""

    def __len__(self) -> int:
        return len(self.actions)

    def add(self, obs: dict, ee_ori, state, action, reward: float, done: bool) -> None:
        """obs: LIBERO's observation dict the action was chosen from; state: the sim state at that moment."""
        self.agentview_rgb.append(np.asarray(obs["agentview_image"], dtype=np.uint8))
        self.eye_in_hand_rgb.append(np.asarray(obs["robot0_eye_in_hand_image"], dtype=np.uint8))
        self.ee_pos.append(np.asarray(obs["robot0_eef_pos"], dtype=np.float64))
        self.ee_ori.append(np.asarray(ee_ori, dtype=np.float64))
        self.gripper_states.append(np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64))
        self.joint_states.append(np.asarray(obs["robot0_joint_pos"], dtype=np.float64))
        self.robot_states.append(np.concatenate(
            [obs["robot0_gripper_qpos"], obs["robot0_eef_pos"], obs["robot0_eef_quat"]]).astype(np.float64))
        self.states.append(np.asarray(state, dtype=np.float64))
        self.actions.append(np.asarray(action, dtype=np.float64))
        self.rewards.append(reward)
        self.dones.append(done)

    def arrays(self) -> dict[str, np.ndarray]:
        """Stacked arrays keyed by their path inside the demo group ("obs/ee_pos", "actions", ...)."""
        n = len(self)
        if n == 0:
            raise ValueError("demo: expected at least one step, got an empty demo")
        ee_pos, ee_ori = _stack("obs/ee_pos", self.ee_pos), _stack("obs/ee_ori", self.ee_ori)
        out = {
            "obs/agentview_rgb": _stack("obs/agentview_rgb", self.agentview_rgb),
            "obs/eye_in_hand_rgb": _stack("obs/eye_in_hand_rgb", self.eye_in_hand_rgb),
            "obs/ee_pos": ee_pos,
            "obs/ee_ori": ee_ori,
            "obs/ee_states": np.concatenate([ee_pos, ee_ori], axis=1),
            "obs/gripper_states": _stack("obs/gripper_states", self.gripper_states),
            "obs/joint_states": _stack("obs/joint_states", self.joint_states),
            "actions": _stack("actions", self.actions),
            "rewards": np.asarray(self.rewards, dtype=np.uint8),
            "dones": np.asarray(self.dones, dtype=np.uint8),
            "states": _stack("states", self.states),
            "robot_states": _stack("robot_states", self.robot_states),
        }
        check_demo_arrays(out)
        return out


def _stack(key: str, rows: list) -> np.ndarray:
    shapes = sorted({np.shape(r) for r in rows})
    if len(shapes) > 1:
        raise ValueError(f"demo: {key} rows differ in shape: {shapes}")
    return np.stack(rows)


EXPECTED_WIDTH = {"obs/ee_pos": 3, "obs/ee_ori": 3, "obs/ee_states": 6, "obs/gripper_states": 2,
                  "obs/joint_states": 7, "actions": 7, "robot_states": 9}


def check_demo_arrays(arrays: dict[str, np.ndarray]) -> int:
    """Raise a ValueError naming the field when a demo's arrays do not have LIBERO's shapes; returns T."""
    n = len(arrays["actions"])
    for key, arr in arrays.items():
        if len(arr) != n:
            raise ValueError(f"demo: {key} has {len(arr)} rows, expected {n} (one per action)")
        if key in EXPECTED_WIDTH and (arr.ndim != 2 or arr.shape[1] != EXPECTED_WIDTH[key]):
            raise ValueError(f"demo: {key} expected shape (T, {EXPECTED_WIDTH[key]}), got {arr.shape}")
        if key.endswith("_rgb") and (arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8):
            raise ValueError(f"demo: {key} expected uint8 (T, H, W, 3), got {arr.dtype} {arr.shape}")
    if arrays["states"].ndim != 2:
        raise ValueError(f"demo: states expected (T, S), got {arrays['states'].shape}")
    return n


def task_file_name(task_name: str) -> str:
    return f"{task_name}_demo.hdf5"


class NativeDemoWriter:
    """Writes one task's demos in LIBERO's native layout (see the module docstring). Use as a context manager."""

    def __init__(self, path: str, *, env_name: str, problem_info: dict, env_args: dict, bddl_file_name: str,
                 bddl_file_content: str = "", extra_attrs: dict | None = None, compress_images: bool = True):
        import h5py

        for key in ("problem_name", "domain_name", "language_instruction"):
            if key not in problem_info:
                raise ValueError(f"problem_info: missing {key!r} (LIBERO's problem_info has problem_name, "
                                 f"domain_name, language_instruction)")
        for key in ("type", "env_name", "env_kwargs"):
            if key not in env_args:
                raise ValueError(f"env_args: missing {key!r}")
        self.path = str(path)
        self.tmp_path = self.path + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.compress_images = compress_images
        self.num_demos = 0
        self.total = 0
        self._file = h5py.File(self.tmp_path, "w")
        grp = self._file.create_group("data")
        grp.attrs["env_name"] = env_name
        grp.attrs["problem_info"] = json.dumps(problem_info)
        grp.attrs["env_args"] = json.dumps(env_args)
        grp.attrs["bddl_file_name"] = bddl_file_name
        grp.attrs["bddl_file_content"] = bddl_file_content
        grp.attrs["macros_image_convention"] = IMAGE_CONVENTION
        for key, value in (extra_attrs or {}).items():
            grp.attrs[key] = value if isinstance(value, str) else json.dumps(value)
        self._update_counts()

    def _update_counts(self) -> None:
        grp = self._file["data"]
        grp.attrs["num_demos"] = self.num_demos
        grp.attrs["total"] = self.total
        self._file.flush()

    def write_demo(self, demo: DemoBuffer) -> str:
        """Append `demo` as `data/demo_<num_demos>`; returns the group name."""
        if self._file is None:
            raise RuntimeError(f"writer for {self.path} is closed")
        arrays = demo.arrays()
        n = len(demo)
        name = f"demo_{self.num_demos}"
        grp = self._file["data"].create_group(name)
        for key, arr in arrays.items():
            if key.endswith("_rgb") and self.compress_images:
                grp.create_dataset(key, data=arr, compression="gzip", compression_opts=4,
                                   chunks=(1,) + arr.shape[1:])
            else:
                grp.create_dataset(key, data=arr)
        grp.attrs["num_samples"] = n
        grp.attrs["init_state"] = arrays["states"][0]
        grp.attrs["model_file"] = demo.model_file
        self.num_demos += 1
        self.total += n
        self._update_counts()
        return name

    def close(self) -> str:
        """Close and rename to the final path (also with zero demos, so a task's file always exists)."""
        if self._file is not None:
            self._update_counts()
            self._file.close()
            self._file = None
            os.replace(self.tmp_path, self.path)
        return self.path

    def __enter__(self) -> "NativeDemoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_native_file(path: str) -> dict:
    """Check that `path` has LIBERO's native layout; raise ValueError naming what is missing or malformed.

    Returns a summary: num_demos, total, language_instruction, image shape, demo lengths."""
    import h5py

    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise ValueError(f"{path}: no 'data' group")
        grp = f["data"]
        for key in DATA_ATTRS:
            if key not in grp.attrs:
                raise ValueError(f"{path}: data attr {key!r} missing")
        problem_info = json.loads(grp.attrs["problem_info"])
        env_args = json.loads(grp.attrs["env_args"])
        if grp.attrs["macros_image_convention"] != IMAGE_CONVENTION:
            raise ValueError(f"{path}: macros_image_convention expected {IMAGE_CONVENTION!r}")
        if "bddl_file" not in env_args or "env_kwargs" not in env_args:
            raise ValueError(f"{path}: env_args expected bddl_file and env_kwargs, got {sorted(env_args)}")
        demos = sorted((k for k in grp.keys() if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
        if len(demos) != int(grp.attrs["num_demos"]):
            raise ValueError(f"{path}: num_demos {grp.attrs['num_demos']} but {len(demos)} demo groups")
        lengths, image_shape = [], None
        for name in demos:
            d = grp[name]
            arrays = {}
            for key in [f"obs/{k}" for k in OBS_KEYS] + list(DEMO_KEYS):
                if key not in d:
                    raise ValueError(f"{path}: {name}/{key} missing")
                arrays[key] = d[key][()]
            n = check_demo_arrays(arrays)
            for key in ("num_samples", "init_state"):
                if key not in d.attrs:
                    raise ValueError(f"{path}: {name} attr {key!r} missing")
            if int(d.attrs["num_samples"]) != n:
                raise ValueError(f"{path}: {name} num_samples {d.attrs['num_samples']} != {n} rows")
            if not np.array_equal(d.attrs["init_state"], arrays["states"][0]):
                raise ValueError(f"{path}: {name} init_state differs from states[0]")
            lengths.append(n)
            image_shape = tuple(arrays["obs/agentview_rgb"].shape[1:])
        if sum(lengths) != int(grp.attrs["total"]):
            raise ValueError(f"{path}: total {grp.attrs['total']} != {sum(lengths)} samples")
        return {"num_demos": len(demos), "total": sum(lengths), "lengths": lengths, "image_shape": image_shape,
                "language_instruction": problem_info["language_instruction"], "problem_info": problem_info}
