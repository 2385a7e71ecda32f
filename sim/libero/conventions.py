"""LIBERO evaluation conventions: openpi's `examples/libero` (our default) and LeRobot's `envs/libero`.

Pure Python (no LIBERO, no robosuite): the CLI in the project venv and the env workers in the LIBERO venv read the
same table, and each result file records the one it ran.

                     openpi (default)                         lerobot
    images           256 px render, rotated 180 degrees       the same
    state (8)        eef pos 3 + axis-angle 3 + gripper qpos 2   the same
    actions          7, replan every 5                        7
    start            10 wait steps of [0]*6 + [-1]            the same
    max steps        spatial 220, object 280, goal 300,       spatial 280, the others the same
                     libero_10 520, libero_90 400
    trials           50 per task; trial i uses init state i   the same (LeRobot recommends 10 x 3 seeds)
    seed             7                                        the same
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")

# LIBERO's camera observation keys -> the names LIBERO-trained policies use for them (first = ours)
CAMERA_KEYS = {
    "agentview_image": ("agentview", "image", "agentview_rgb", "observation.images.image", "front", "base"),
    "robot0_eye_in_hand_image": ("wrist", "wrist_image", "eye_in_hand", "eye_in_hand_rgb",
                                 "observation.images.wrist_image", "robot0_eye_in_hand", "hand"),
}
STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay", "eef_az", "gripper_left", "gripper_right")
STATE_DIM = len(STATE_NAMES)
ACTION_DIM = 7
NOOP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # gripper -1: open


@dataclass(frozen=True)
class Conventions:
    name: str
    max_steps: dict = field(default_factory=dict)  # suite -> policy steps after the wait steps
    wait_steps: int = 10
    image_size: int = 256
    rotate_180: bool = True  # images[::-1, ::-1]: LIBERO renders upside down (OpenGL); a flip alone mirrors them
    replan_every: int = 5
    seed: int = 7
    trials_per_task: int = 50

    def steps_for(self, suite: str) -> int:
        check_suite(suite)
        return int(self.max_steps[suite])

    def to_dict(self) -> dict:
        return asdict(self)


OPENPI = Conventions(
    name="openpi",
    max_steps={"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400},
)
LEROBOT = Conventions(
    name="lerobot",
    max_steps={"libero_spatial": 280, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400},
)
CONVENTIONS = {"openpi": OPENPI, "lerobot": LEROBOT}


def check_suite(suite: str) -> str:
    if suite not in SUITES:
        close = difflib.get_close_matches(suite, SUITES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"suite: unknown LIBERO suite {suite!r}{hint} (one of {', '.join(SUITES)})")
    return suite


def get_conventions(name: str) -> Conventions:
    if name not in CONVENTIONS:
        raise ValueError(f"conventions: expected one of {sorted(CONVENTIONS)}, got {name!r}")
    return CONVENTIONS[name]


def quat_to_axis_angle(quat) -> tuple[float, float, float]:
    """(x, y, z, w) quaternion -> axis-angle (3,), as robosuite's `quat2axisangle` (openpi and LeRobot use it).
    The angle is in [0, 2 pi) with w clipped to [-1, 1]; a zero rotation gives zeros."""
    x, y, z, w = (float(v) for v in quat)
    w = min(1.0, max(-1.0, w))
    den = math.sqrt(max(0.0, 1.0 - w * w))
    if den < 1e-12:
        return (0.0, 0.0, 0.0)
    angle = 2.0 * math.acos(w)
    return (x * angle / den, y * angle / den, z * angle / den)


def libero_state(eef_pos, eef_quat, gripper_qpos) -> list[float]:
    """The 8-dim state both peers feed LIBERO policies: eef pos (3) + axis-angle (3) + gripper qpos (2)."""
    return [float(v) for v in eef_pos] + list(quat_to_axis_angle(eef_quat)) + [float(v) for v in gripper_qpos]


def episode_settings(suite: str, conventions: str = "openpi", image_size: int | None = None,
                     replan_every: int | None = None, max_steps: int | None = None) -> dict:
    """What one run's episodes share (and every episode record carries): the conventions' values unless overridden."""
    conv = get_conventions(conventions)
    return {"suite": check_suite(suite), "conventions": conv.name,
            "max_steps": int(max_steps or conv.steps_for(suite)),
            "replan_every": int(replan_every or conv.replan_every),
            "image_size": int(image_size or conv.image_size), "seed": conv.seed, "wait_steps": conv.wait_steps}


def shard_jobs(jobs: list, shard: tuple[int, int]) -> list:
    """Shard K of N (0-based K): every N-th job from K. All shards together cover each job exactly once."""
    k, n = shard
    if not (n >= 1 and 0 <= k < n):
        raise ValueError(f"shard: expected K/N with 0 <= K < N, got {k}/{n}")
    return jobs[k::n]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"shard: expected K/N (e.g. 0/4), got {text!r}") from None
    shard_jobs([], (k, n))
    return k, n
