"""Safety layer between a command and the arm: every rule that changes an action is an intervention, logged
and counted.

Rules, in order (eef_delta actions, float32 (7,); joint_absolute actions go through filter_joints: reject, gripper
limits, joint_limits (targets clipped inside the limits less the margin), max_joint_step):
  reject            NaN/inf or a wrong shape: nothing is applied (UnsafeAction)
  action_limits     each dimension clipped to [ActionSpec.low, ActionSpec.high]
  gripper_limits    the gripper command clipped to [gripper_low, gripper_high]
  workspace         the end-effector target (reference position + translation) clipped into the box
  max_translation   the translation per step scaled down to max_step_translation_m
  max_rotation      the rotation vector per step scaled down to max_step_rotation_rad
The box comes before the step limits, so an arm that starts outside the box walks back at most one step a time.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger("robot_bridge.safety")

RULES = ("action_limits", "gripper_limits", "workspace", "max_translation", "max_rotation", "joint_limits",
         "max_joint_step")


class UnsafeAction(ValueError):
    """An action that cannot be made safe by clipping (NaN, inf, wrong shape): nothing was applied."""


@dataclass(frozen=True)
class SafetyConfig:
    workspace_low: tuple[float, float, float] | None = None  # m, robot base frame; None: no box
    workspace_high: tuple[float, float, float] | None = None
    max_step_translation_m: float = 0.01  # per applied command (at 20 Hz: 0.2 m/s)
    max_step_rotation_rad: float = 0.05  # per applied command (at 20 Hz: 1 rad/s)
    gripper_low: float = -1.0
    gripper_high: float = 1.0
    # pose monitor (robot server, every state tick): a measured end effector further than this outside the box, or a
    # joint closer than joint_limit_margin_rad to its limit, stops the arm and latches a fault until release
    pose_tolerance_m: float = 0.02
    joint_limit_margin_rad: float = 0.02
    check_reach: bool = True  # at start-up: the box's corners within the arm's reach (robot_bridge.reach)

    def __post_init__(self):
        if (self.workspace_low is None) != (self.workspace_high is None):
            raise ValueError("workspace_low / workspace_high: give both or neither")
        if self.workspace_low is not None:
            lo, hi = np.asarray(self.workspace_low, float), np.asarray(self.workspace_high, float)
            if lo.shape != (3,) or hi.shape != (3,) or not np.all(lo < hi):
                raise ValueError(f"workspace: expected low (3,) < high (3,) in metres, got {self.workspace_low}, "
                                 f"{self.workspace_high}")
        if not self.max_step_translation_m > 0:
            raise ValueError(f"max_step_translation_m: expected > 0, got {self.max_step_translation_m}")
        if not self.max_step_rotation_rad > 0:
            raise ValueError(f"max_step_rotation_rad: expected > 0, got {self.max_step_rotation_rad}")
        if not self.pose_tolerance_m >= 0 or not self.joint_limit_margin_rad >= 0:
            raise ValueError(f"pose_tolerance_m / joint_limit_margin_rad: expected >= 0, got {self.pose_tolerance_m}, "
                             f"{self.joint_limit_margin_rad}")
        if not -1.0 <= self.gripper_low < self.gripper_high <= 1.0:
            raise ValueError(f"gripper_low/gripper_high: expected -1 <= low < high <= 1, got {self.gripper_low}, "
                             f"{self.gripper_high}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def permissive(cls, action_spec) -> "SafetyConfig":
        """Step limits just above what the action space can express (simulators, equivalence tests): only the
        action limits can intervene."""
        m = max(abs(action_spec.low), abs(action_spec.high)) * np.sqrt(3) * 1.001
        return cls(max_step_translation_m=float(action_spec.pos_scale_m * m),
                   max_step_rotation_rad=float(action_spec.rot_scale_rad * m))


@dataclass
class Intervention:
    rule: str
    t: float  # time.time()
    detail: str
    before: list
    after: list


class SafetyFilter:
    """Stateful only in its counters. filter() is called from the robot's thread; counters are read by others."""

    def __init__(self, config: SafetyConfig, action_spec, history: int = 1000):
        self.config = config
        self.spec = action_spec
        self.counts: collections.Counter = collections.Counter()  # rule -> interventions; also "rejected"
        self.commands = 0  # actions filtered (including rejected)
        self.intervened = 0  # actions changed by at least one rule
        self.recent: collections.deque[Intervention] = collections.deque(maxlen=history)
        self._lock = threading.Lock()
        cfg = config
        self._lo = None if cfg.workspace_low is None else np.asarray(cfg.workspace_low, np.float64)
        self._hi = None if cfg.workspace_high is None else np.asarray(cfg.workspace_high, np.float64)

    def summary(self) -> dict:
        with self._lock:
            return {"commands": self.commands, "intervened": self.intervened, **{r: self.counts[r] for r in RULES},
                    "rejected": self.counts["rejected"]}

    def _record(self, rule: str, detail: str, before, after, hits: list) -> None:
        hits.append(rule)
        ev = Intervention(rule, time.time(), detail, np.asarray(before, float).round(6).tolist(),
                          np.asarray(after, float).round(6).tolist())
        with self._lock:
            self.counts[rule] += 1
            self.recent.append(ev)
        log.info("safety %s: %s (before %s, after %s)", rule, detail, ev.before, ev.after)

    def check(self, action) -> np.ndarray:
        """Shape and finiteness only: the action as float64 (D,), or UnsafeAction (counted as a rejected command).
        The base class checks an action with it before converting it to the executed space (ActionSpec.executed)."""
        spec = self.spec
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            a = None
        if a is None or a.shape != (spec.dim,) or not np.all(np.isfinite(a)):
            with self._lock:
                self.commands += 1
                self.counts["rejected"] += 1
            what = "not numeric" if a is None else (f"shape {a.shape}" if a.shape != (spec.dim,) else
                                                   f"NaN/inf at {np.where(~np.isfinite(a))[0].tolist()}")
            log.warning("safety reject: action %s; expected finite float (%d,)", what, spec.dim)
            raise UnsafeAction(f"action: {what}; expected {spec.dim} finite numbers")
        return a

    def _reject_bad(self, action) -> np.ndarray:
        a = self.check(action)
        with self._lock:
            self.commands += 1
        return a

    def filter_joints(self, action, reference_q: np.ndarray, joint_limits) -> np.ndarray:
        """joint_absolute: action (n + 1,) = joint targets (rad) and the gripper -> the safe action float32. Each
        target is clipped into the joint limits (less joint_limit_margin_rad) and moved at most
        ActionSpec.max_step_joint_rad from reference_q (n,), the last target or the measured joints."""
        spec, cfg = self.spec, self.config
        a = self._reject_bad(action)
        orig, hits = a.copy(), []
        g = spec.gripper_index
        joints = np.delete(np.arange(spec.dim), g)
        gc = float(np.clip(a[g], max(spec.low, cfg.gripper_low), min(spec.high, cfg.gripper_high)))
        if gc != a[g]:
            self._record("gripper_limits", f"gripper {a[g]:.3f} outside [{cfg.gripper_low}, {cfg.gripper_high}]",
                         [a[g]], [gc], hits)
            a[g] = gc
        lo = np.asarray(joint_limits[0], np.float64) + cfg.joint_limit_margin_rad
        hi = np.asarray(joint_limits[1], np.float64) - cfg.joint_limit_margin_rad
        q = a[joints]
        inside = np.clip(q, lo, hi)
        if np.any(inside != q):
            self._record("joint_limits", f"joints {np.where(inside != q)[0].tolist()} outside their limits", q, inside,
                         hits)
            q = inside
        ref = np.asarray(reference_q, np.float64)
        step = np.clip(q - ref, -spec.max_step_joint_rad, spec.max_step_joint_rad)
        if np.any(np.abs(ref + step - q) > 1e-12):
            self._record("max_joint_step", f"joint step > {spec.max_step_joint_rad} rad", q - ref, step, hits)
            q = ref + step
        a[joints] = q
        if hits:
            with self._lock:
                self.intervened += 1
            return a.astype(np.float32)
        return orig.astype(np.float32)

    def filter(self, action, reference_pos: np.ndarray | None) -> np.ndarray:
        """action (D,) -> the safe action float32 (D,). reference_pos (3,): where the next translation starts
        (None: the workspace rule is skipped). Raises UnsafeAction for what no clipping can fix."""
        spec, cfg = self.spec, self.config
        a = self._reject_bad(action)
        orig = a.copy()
        hits = []  # rules that changed this action

        clipped = np.clip(a, spec.low, spec.high)
        if np.any(clipped != a):
            self._record("action_limits", f"dims {np.where(clipped != a)[0].tolist()} outside [{spec.low}, {spec.high}]",
                         a, clipped, hits)
            a = clipped
        g = spec.gripper_index
        gc = float(np.clip(a[g], cfg.gripper_low, cfg.gripper_high))
        if gc != a[g]:
            self._record("gripper_limits", f"gripper {a[g]:.3f} outside [{cfg.gripper_low}, {cfg.gripper_high}]",
                         [a[g]], [gc], hits)
            a[g] = gc

        dpos = a[0:3] * spec.pos_scale_m  # m, base frame
        drot = a[3:6] * spec.rot_scale_rad  # rad, rotation vector
        if self._lo is not None and reference_pos is not None:
            ref = np.asarray(reference_pos, np.float64)
            target = ref + dpos
            inside = np.clip(target, self._lo, self._hi)
            if np.any(np.abs(inside - target) > 1e-9):
                self._record("workspace", f"target {np.round(target, 4).tolist()} outside the box "
                                          f"{self._lo.tolist()}..{self._hi.tolist()}", target, inside, hits)
                dpos = inside - ref
        n = float(np.linalg.norm(dpos))
        if n > cfg.max_step_translation_m * (1 + 1e-6):  # float32 actions: 0.2 * 0.05 is 0.0100000001
            new = dpos * (cfg.max_step_translation_m / n)
            self._record("max_translation", f"step {n * 1e3:.1f} mm > {cfg.max_step_translation_m * 1e3:.1f} mm",
                         dpos, new, hits)
            dpos = new
        r = float(np.linalg.norm(drot))
        if r > cfg.max_step_rotation_rad * (1 + 1e-6):
            new = drot * (cfg.max_step_rotation_rad / r)
            self._record("max_rotation", f"step {r:.3f} rad > {cfg.max_step_rotation_rad:.3f} rad", drot, new, hits)
            drot = new
        if hits:
            a[0:3] = dpos / spec.pos_scale_m
            a[3:6] = drot / spec.rot_scale_rad
            with self._lock:
                self.intervened += 1
            return a.astype(np.float32)
        return orig.astype(np.float32)
