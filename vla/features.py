"""A dataset's declared feature mapping: which keys are the cameras (and their names in the policy), which keys make
the state (concatenated in order), which key is the action, the action space, where the instruction comes from, and
the control rate. One place per source; a training config can give its own (`data.features`).

    FeatureMap.detect(h5file, path)   our HDF5 ("vla-stack/1": obs/state) or robomimic's released layout
                                      (obs/robot0_eef_pos + robot0_eef_quat + robot0_gripper_qpos, agentview_image,
                                      robot0_eye_in_hand_image; no obs/state, mask/ optional)
    FeatureMap.from_dict({...})       a user's mapping, validated: each field named in its errors

Frames that are not square are cropped (centre) or padded to a square before they are resized, never squashed
(`fit_frames`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import numpy as np

ACTION_SPACES = ("eef_delta", "eef_absolute", "joint_delta", "joint_absolute")
# Per-dim names of this project's observation state (9: end-effector position, quaternion xyzw, the two gripper
# fingers' positions) and eef_delta action (7). The robot side's observation spec names them the same
# (robot_bridge.robots.base.STATE_NAMES, ACTION_NAMES: vla does not import robot_bridge, so each package keeps the
# list and tests/test_lerobot.py holds them equal); a dataset without names of its own is exported with these.
STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_qx", "eef_qy", "eef_qz", "eef_qw", "finger_left", "finger_right")
ACTION_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")


def action_units_of(kind: str, dim: int, arms=None) -> tuple:
    """The units an action space's dims have by convention (robot_bridge.robots.base says the same for the robot
    side): eef_delta (7) "action" x6 (scaled by the arm's pos/rot scales) + "gripper"; eef_absolute (7) m x3, rad x3
    (rotation vector), "gripper"; joint kinds "rad" per joint and "gripper" at each arm's gripper index (without an
    arm layout: the last dim)."""
    if kind == "eef_delta" and dim == 7:
        return ("action",) * 6 + ("gripper",)
    if kind == "eef_absolute" and dim == 7:
        return ("m",) * 3 + ("rad",) * 3 + ("gripper",)
    if kind.startswith("joint"):
        grippers = {a["gripper"] for a in arms if a.get("gripper") is not None} if arms else {dim - 1}
        return tuple("gripper" if i in grippers else "rad" for i in range(dim))
    return ("unknown",) * dim


@dataclass
class Demo:
    """One demonstration as every reader returns it (vla.formats: one reader per dataset format)."""

    name: str
    task: str
    instruction: str
    images: dict  # camera -> uint8 (T, S, S, 3) (an array, or a memmap view of the frame cache)
    state: np.ndarray  # float32 (T, state_dim): the feature map's state keys concatenated
    actions: np.ndarray  # float32 (T, action_dim)
    object_pos: np.ndarray  # float32 (T, 3, 3)

    def __len__(self) -> int:
        return len(self.actions)


class DatasetError(ValueError):
    """A dataset file is missing, corrupt, or lacks a key; the message names the file and the key."""


@dataclass(frozen=True)
class FeatureMap:
    cameras: dict = field(default_factory=dict)  # policy camera name -> key under obs/ (uint8 (T, H, W, 3))
    state: tuple = ()  # keys under obs/, each (T,) or (T, k), concatenated in this order
    action: str = "actions"  # key under the demo group, (T, D)
    action_space: str = "eef_delta"  # one of ACTION_SPACES
    instruction: str | None = None  # a constant; None: each demo's `instruction` attribute, else its task name
    fps: float | None = None  # control rate of the recording (Hz), when known
    action_names: tuple | None = None  # per-dim meaning (units in the name: "left_q1_rad"); LeRobot: the
    # feature's names
    arms: tuple | None = None  # several arms in one action: ({"name": "left", "dims": [0, 7], "gripper": 6}, ...),
    # dims a [start, end) range, gripper an index inside it (or None); the ranges tile the action without overlap
    action_units: tuple | None = None  # per-dim unit ("m", "rad", "action", "gripper", ...); None: action_units_of()
    state_names: tuple | None = None  # per-dim meaning of the concatenated state ("eef_x", ...), when known

    def __post_init__(self):
        if not isinstance(self.cameras, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                         for k, v in self.cameras.items()):
            raise ValueError(f"data.features.cameras: expected a map camera name -> obs key, got {self.cameras!r}")
        keys = list(self.cameras.values())
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"data.features.cameras: obs key(s) {twice} mapped to more than one camera")
        if not self.state or not all(isinstance(k, str) for k in self.state):
            raise ValueError(f"data.features.state: expected a non-empty list of obs keys, got {self.state!r}")
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"data.features.action_space: expected one of {list(ACTION_SPACES)}, "
                             f"got {self.action_space!r}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"data.features.fps: expected > 0, got {self.fps}")
        for i, arm in enumerate(self.arms or ()):
            ok = (isinstance(arm, dict) and isinstance(arm.get("name"), str)
                  and isinstance(arm.get("dims"), (list, tuple))
                  and len(arm["dims"]) == 2 and 0 <= arm["dims"][0] < arm["dims"][1]
                  and (arm.get("gripper") is None or arm["dims"][0] <= arm["gripper"] < arm["dims"][1]))
            if not ok:
                raise ValueError(f"data.features.arms[{i}]: expected {{name, dims: [start, end), gripper: index inside "
                                 f"dims or null}}, got {arm!r}")
        if self.arms:
            spans = sorted(tuple(a["dims"]) for a in self.arms)
            if spans[0][0] != 0 or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
                raise ValueError(f"data.features.arms: the dims ranges {spans} must tile the action from 0 without "
                                 f"gaps or overlap")

    def action_space_record(self, dim: int) -> dict:
        """What the checkpoint and the server's handshake say the actions are (robot_bridge reads kind and dim; names
        and arms tell an integrator which numbers drive which joint of which arm)."""
        if self.arms and max(a["dims"][1] for a in self.arms) != dim:
            raise ValueError(f"data.features.arms: the ranges end at {max(a['dims'][1] for a in self.arms)}, the "
                             f"data's action has {dim} dims")
        if self.action_names is not None and len(self.action_names) != dim:
            raise ValueError(f"data.features.action_names: {len(self.action_names)} names for {dim} action dims")
        if self.action_units is not None and len(self.action_units) != dim:
            raise ValueError(f"data.features.action_units: {len(self.action_units)} units for {dim} action dims")
        out: dict = {"kind": self.action_space, "dim": dim,
                     "units": list(self.action_units or action_units_of(self.action_space, dim, self.arms))}
        if self.action_names is not None:
            out["names"] = list(self.action_names)
        if self.arms:
            out["arms"] = [{"name": a["name"], "dims": list(a["dims"]), "gripper": a.get("gripper")} for a in self.arms]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureMap":
        if not isinstance(d, dict):
            raise ValueError(f"data.features: expected a map, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            import difflib

            hint = [difflib.get_close_matches(u, known, n=1) for u in unknown]
            raise ValueError(f"data.features: unknown field(s) {unknown}; expected some of {sorted(known)}"
                             + "".join(f" ({u!r}: did you mean {h[0]!r}?)" for u, h in zip(unknown, hint) if h))
        d = dict(d)
        if "state" in d:
            d["state"] = tuple(d["state"]) if isinstance(d["state"], (list, tuple)) else (d["state"],)
        for k in ("action_names", "arms", "action_units", "state_names"):
            if d.get(k) is not None:
                d[k] = tuple(d[k]) if isinstance(d[k], (list, tuple)) else d[k]
        return cls(**d)

    def to_dict(self) -> dict:
        return {"cameras": dict(self.cameras), "state": list(self.state), "action": self.action,
                "action_space": self.action_space, "instruction": self.instruction, "fps": self.fps,
                "action_names": list(self.action_names) if self.action_names is not None else None,
                "arms": [dict(a) for a in self.arms] if self.arms else None,
                "action_units": list(self.action_units) if self.action_units is not None else None,
                "state_names": list(self.state_names) if self.state_names is not None else None}

    @classmethod
    def detect(cls, f, path: str) -> "FeatureMap":
        """The mapping of an open HDF5 file: ours, or robomimic's released key layout (cameras that exist only)."""
        names = list(f["data"].keys()) if "data" in f else []
        if not names:
            raise DatasetError(f"{path}: no demos under 'data'")
        obs = f["data"][names[0]].get("obs")
        keys = set(obs.keys()) if obs is not None else set()
        if "state" in keys:  # ours: every obs/<camera>_image is a camera
            cams = {k[: -len("_image")]: k for k in sorted(keys) if k.endswith("_image")}
            state: tuple = ("state",)
        elif {"robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"} <= keys:
            cams = {"agentview": "agentview_image", "wrist": "robot0_eye_in_hand_image"}
            state = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
        else:
            raise DatasetError(f"{path}: data/{names[0]}/obs has neither 'state' (vla-stack) nor robomimic's "
                               f"robot0_eef_pos/robot0_eef_quat/robot0_gripper_qpos (keys: {sorted(keys)[:12]}); "
                               f"declare the mapping in data.features (cameras, state, action)")
        cams = {c: k for c, k in cams.items() if k in keys}
        fps = None
        try:
            env_args = json.loads(f["data"].attrs.get("env_args", "{}"))
            kw = env_args.get("env_kwargs") or {}
            fps = float(kw["control_freq"]) if "control_freq" in kw else None
        except (ValueError, TypeError):
            pass
        return cls(cameras=cams, state=state, fps=fps or 20.0)


def fit_frames(images: np.ndarray, size: int, mode: str = "crop") -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, size, size, 3): a non-square frame is centre-cropped (mode "crop") or padded with
    black (mode "pad") to a square first, then resized (INTER_AREA); never squashed."""
    if mode not in ("crop", "pad"):
        raise ValueError(f"data.frame_fit: expected 'crop' or 'pad', got {mode!r}")
    T, H, W = images.shape[:3]
    if H != W:
        if mode == "crop":
            s = min(H, W)
            y, x = (H - s) // 2, (W - s) // 2
            images = images[:, y:y + s, x:x + s]
        else:
            s = max(H, W)
            out = np.zeros((T, s, s, images.shape[3]), images.dtype)
            y, x = (s - H) // 2, (s - W) // 2
            out[:, y:y + H, x:x + W] = images
            images = out
    if images.shape[1] == size:
        return np.ascontiguousarray(images)
    import cv2

    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
