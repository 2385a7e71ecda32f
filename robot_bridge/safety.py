"""Safety layer between a command and the arm: every rule that changes an action is an intervention, logged
and counted.

Rules, in order (eef_delta actions, float32 (7,); joint_absolute actions go through filter_joints: reject, gripper
limits, joint_limits (targets clipped inside the limits less the margin), max_joint_step, max_ee_step):
  reject            NaN/inf or a wrong shape: nothing is applied (UnsafeAction)
  action_limits     each dimension clipped to [ActionSpec.low, ActionSpec.high]
  gripper_limits    the gripper command clipped to [gripper_low, gripper_high]
  workspace         the end-effector target (reference position + translation x travel) clipped into the box; travel
                    > 1 for a velocity-mode arm that keeps moving until the watchdog stops it
  max_translation   the translation per step scaled down to max_step_translation_m
  max_rotation      the rotation vector per step scaled down to max_step_rotation_rad
  max_ee_step       joint modes with forward kinematics: the joint step scaled down until the end effector moves at
                    most max_step_translation_m and turns at most max_step_rotation_rad (as in the end-effector modes)
The box comes before the step limits, so an arm that starts outside the box walks back at most one step a time.

A non-finite reference (the measured pose or joints the step counts from) is not clipped around: it raises
SafetyFault, which the robot server treats as a fault of the arm. verify() is the last check before an adapter's
_apply, whatever path produced the action: finite, within the action range and every step limit.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from robot_bridge.geometry import quat_angle

log = logging.getLogger("robot_bridge.safety")

RULES = ("action_limits", "gripper_limits", "workspace", "max_translation", "max_rotation", "joint_limits",
         "max_joint_step", "max_ee_step")
_TOL = 1e-6  # relative slack of the step checks (float32 actions: 0.2 * 0.05 is 0.0100000001)


class UnsafeAction(ValueError):
    """An action that cannot be made safe by clipping (NaN, inf, wrong shape): nothing was applied."""


class SafetyFault(RuntimeError):
    """The arm's side is wrong, not the command: a non-finite reference (measured pose or joints), or an action
    that failed the final check before the arm. Nothing was applied; the robot server latches a fault."""


def _finite(x) -> bool:
    try:
        return bool(np.all(np.isfinite(np.asarray(x, np.float64))))
    except (TypeError, ValueError):
        return False


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
                    "rejected": self.counts["rejected"], "refused_reference": self.counts["refused_reference"],
                    "final_check_failed": self.counts["final_check_failed"]}

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
            a = np.array(action, dtype=np.float64)  # a copy: the rules never change the caller's array
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

    def reject(self, what: str) -> None:
        """Count a command refused before the rules (e.g. an eef_absolute target that no rotation can express) and
        raise UnsafeAction(what)."""
        with self._lock:
            self.commands += 1
            self.counts["rejected"] += 1
        log.warning("safety reject: %s", what)
        raise UnsafeAction(what)

    def _reject_bad(self, action) -> np.ndarray:
        a = self.check(action)
        with self._lock:
            self.commands += 1
        return a

    def reference(self, ref, n: int, what: str) -> np.ndarray:
        """The reference a step counts from, (n,) finite, or SafetyFault (nothing is applied; the server faults)."""
        r = np.asarray(ref, np.float64) if ref is not None else None
        if r is None or r.shape != (n,) or not np.all(np.isfinite(r)):
            with self._lock:
                self.counts["refused_reference"] += 1
            raise SafetyFault(f"safety: the {what} the step counts from is "
                              f"{None if r is None else np.round(r, 4).tolist()}; expected {n} finite numbers")
        return r

    def _joint_ranges(self, joint_limits, n: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.asarray(joint_limits[0], np.float64) + self.config.joint_limit_margin_rad
        hi = np.asarray(joint_limits[1], np.float64) - self.config.joint_limit_margin_rad
        if lo.shape != (n,) or hi.shape != (n,) or not (_finite(lo) and _finite(hi)):
            raise SafetyFault(f"safety: joint limits {joint_limits!r}; expected two finite ({n},) bounds")
        return lo, hi

    def _ee_step(self, fk, q0: np.ndarray, q1: np.ndarray) -> tuple[float, float]:
        """(translation m, rotation rad) of the end effector between joint positions q0 and q1 (fk: q -> (pos,
        quat xyzw))."""
        p0, r0 = fk(q0)
        p1, r1 = fk(q1)
        return float(np.linalg.norm(np.asarray(p1) - np.asarray(p0))), quat_angle(r0, r1)

    def filter_joints(self, action, reference_q: np.ndarray, joint_limits, fk=None) -> np.ndarray:
        """joint_absolute: action (n + 1,) = joint targets (rad) and the gripper -> the safe action float32. Each
        target is clipped into the joint limits (less joint_limit_margin_rad) and moved at most
        ActionSpec.max_step_joint_rad from reference_q (n,), the last target or the measured joints. fk (q (n,) ->
        (pos (3,), quat xyzw (4,))): the whole step is then scaled down until the end effector moves at most
        max_step_translation_m and turns at most max_step_rotation_rad (the end-effector modes' limits)."""
        spec, cfg = self.spec, self.config
        a = self._reject_bad(action)
        orig, hits = a.copy(), []
        g = spec.gripper_index % spec.dim
        joints = np.delete(np.arange(spec.dim), g)
        ref = self.reference(reference_q, len(joints), "joint position")
        lo, hi = self._joint_ranges(joint_limits, len(joints))
        gc = float(np.clip(a[g], max(spec.low, cfg.gripper_low), min(spec.high, cfg.gripper_high)))
        if gc != a[g]:
            self._record("gripper_limits", f"gripper {a[g]:.3f} outside [{cfg.gripper_low}, {cfg.gripper_high}]",
                         [a[g]], [gc], hits)
            a[g] = gc
        q = a[joints]
        inside = np.clip(q, lo, hi)
        if np.any(inside != q):
            self._record("joint_limits", f"joints {np.where(inside != q)[0].tolist()} outside their limits", q, inside,
                         hits)
            q = inside
        step = np.clip(q - ref, -spec.max_step_joint_rad, spec.max_step_joint_rad)
        if np.any(np.abs(ref + step - q) > 1e-12):
            self._record("max_joint_step", f"joint step > {spec.max_step_joint_rad} rad", q - ref, step, hits)
            q = ref + step
        if fk is not None:
            q = self._bound_ee_step(fk, ref, q, hits)
        a[joints] = q
        if hits:
            with self._lock:
                self.intervened += 1
            return a.astype(np.float32)
        return orig.astype(np.float32)

    def _box_excess(self, p: np.ndarray) -> np.ndarray:
        return np.maximum(self._lo - p, p - self._hi)  # (3,) m outside the box per axis (<= 0 inside)

    def _ee_ok(self, fk, ref: np.ndarray, q: np.ndarray, slack: float = 0.0) -> tuple[bool, bool]:
        """(step within the end-effector step limits, no axis of the end effector further outside the box than at
        ref) for the joint step ref -> q."""
        cfg = self.config
        p0, r0 = fk(ref)
        p1, r1 = fk(q)
        t, r = float(np.linalg.norm(np.asarray(p1) - np.asarray(p0))), quat_angle(r0, r1)
        if not (np.isfinite(t) and np.isfinite(r)):
            raise SafetyFault(f"safety: forward kinematics of {np.round(q, 4).tolist()} is not finite")
        step_ok = t <= cfg.max_step_translation_m * (1 + slack) and r <= cfg.max_step_rotation_rad * (1 + slack)
        box_ok = self._lo is None or bool(np.all(self._box_excess(np.asarray(p1)) <=
                                                 np.maximum(self._box_excess(np.asarray(p0)), 0.0) + 1e-9 + slack))
        return step_ok, box_ok

    def _bound_ee_step(self, fk, ref: np.ndarray, q: np.ndarray, hits: list) -> np.ndarray:
        """The largest fraction s of the joint step q - ref (bisection) whose end-effector motion keeps within the
        end-effector modes' step limits and takes no axis further outside the box. q is returned unchanged when the
        whole step does."""
        step_ok, box_ok = self._ee_ok(fk, ref, q, _TOL)
        if step_ok and box_ok:
            return q
        lo_s, hi_s = 0.0, 1.0
        for _ in range(30):
            mid = 0.5 * (lo_s + hi_s)
            lo_s, hi_s = (mid, hi_s) if all(self._ee_ok(fk, ref, ref + mid * (q - ref))) else (lo_s, mid)
        new = ref + lo_s * (q - ref)
        t, r = self._ee_step(fk, ref, q)
        if not step_ok:
            cfg = self.config
            limit = f"{cfg.max_step_translation_m * 1e3:.1f} mm / {cfg.max_step_rotation_rad:.3f} rad"
            self._record("max_ee_step", f"end effector step {t * 1e3:.1f} mm / {r:.3f} rad > {limit}", q - ref,
                         new - ref, hits)
        if not box_ok:
            self._record("workspace", f"joint step would take the end effector further outside the box "
                                      f"{self._lo.tolist()}..{self._hi.tolist()}", q - ref, new - ref, hits)
        return new

    def filter(self, action, reference_pos: np.ndarray | None, travel: float = 1.0) -> np.ndarray:
        """action (D,) -> the safe action float32 (D,). reference_pos (3,): where the next translation starts
        (None: the workspace rule is skipped). travel (>= 1): how many times the translation the arm may cover before
        it can be stopped (a velocity-mode arm keeps going until the watchdog holds it); the box clips reference +
        translation x travel. Raises UnsafeAction for what no clipping can fix, SafetyFault for a non-finite
        reference."""
        spec, cfg = self.spec, self.config
        a = self._reject_bad(action)
        ref = None if reference_pos is None else self.reference(reference_pos, 3, "end-effector position")
        if not (np.isfinite(travel) and travel >= 1.0):
            raise SafetyFault(f"safety: travel {travel!r}; expected a finite number >= 1")
        orig = a.copy()
        hits = []  # rules that changed this action

        clipped = np.clip(a, spec.low, spec.high)
        if np.any(clipped != a):
            self._record("action_limits",
                         f"dims {np.where(clipped != a)[0].tolist()} outside [{spec.low}, {spec.high}]",
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
        if self._lo is not None and ref is not None:
            target = ref + dpos * travel
            inside = np.clip(target, self._lo, self._hi)
            if np.any(np.abs(inside - target) > 1e-9):
                self._record("workspace", f"target {np.round(target, 4).tolist()} outside the box "
                                          f"{self._lo.tolist()}..{self._hi.tolist()}", target, inside, hits)
                dpos = (inside - ref) / travel
        n = float(np.linalg.norm(dpos))
        if n > cfg.max_step_translation_m * (1 + _TOL):
            new = dpos * (cfg.max_step_translation_m / n)
            self._record("max_translation", f"step {n * 1e3:.1f} mm > {cfg.max_step_translation_m * 1e3:.1f} mm",
                         dpos, new, hits)
            dpos = new
        r = float(np.linalg.norm(drot))
        if r > cfg.max_step_rotation_rad * (1 + _TOL):
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

    # ----- the last check before the arm -----
    def _fail(self, what: str) -> None:
        with self._lock:
            self.counts["final_check_failed"] += 1
        log.error("safety final check: %s; nothing applied", what)
        raise SafetyFault(f"safety final check: {what}; nothing applied")

    def verify(self, action, reference, joint_limits=None, fk=None, travel: float = 1.0) -> None:
        """The last check before an adapter's _apply, whatever produced `action` (D,) (executed space): finite,
        within the action range, the gripper and every step limit from `reference` (eef_delta: the position (3,) or
        None; joint_absolute: the joints (n,)), the box (eef_delta: no axis further out than the reference). Raises
        SafetyFault; returns nothing."""
        spec, cfg = self.spec, self.config
        a = np.asarray(action, np.float64)
        if a.shape != (spec.dim,) or not np.all(np.isfinite(a)):
            self._fail(f"action {np.asarray(action).tolist()} is not {spec.dim} finite numbers")
        g = spec.gripper_index % spec.dim
        if not (max(spec.low, cfg.gripper_low) - _TOL <= a[g] <= min(spec.high, cfg.gripper_high) + _TOL):
            self._fail(f"gripper {a[g]} outside [{cfg.gripper_low}, {cfg.gripper_high}]")
        if spec.kind == "joint_absolute":
            joints = np.delete(np.arange(spec.dim), g)
            ref = np.asarray(reference, np.float64)
            q = a[joints]
            if ref.shape != q.shape or not np.all(np.isfinite(ref)):
                self._fail(f"joint reference {ref.tolist()} is not {len(q)} finite numbers")
            if joint_limits is not None:
                lo, hi = self._joint_ranges(joint_limits, len(q))
                if np.any(q < lo - 1e-6) or np.any(q > hi + 1e-6):
                    self._fail(f"joint targets {np.round(q, 4).tolist()} outside the limits")
            if np.max(np.abs(q - ref)) > spec.max_step_joint_rad * (1 + _TOL) + 1e-7:
                self._fail(f"joint step {np.max(np.abs(q - ref)):.4f} rad > {spec.max_step_joint_rad} rad")
            if fk is not None:
                step_ok, box_ok = self._ee_ok(fk, ref, q, 1e-3)
                if not step_ok:
                    t, r = self._ee_step(fk, ref, q)
                    self._fail(f"end effector step {t * 1e3:.2f} mm / {r:.4f} rad over the step limits")
                if not box_ok:
                    self._fail(f"joint targets {np.round(q, 4).tolist()} take the end effector further outside the box")
            return
        if np.any(a < spec.low - _TOL) or np.any(a > spec.high + _TOL):
            self._fail(f"action {np.round(a, 4).tolist()} outside [{spec.low}, {spec.high}]")
        dpos, drot = a[0:3] * spec.pos_scale_m, a[3:6] * spec.rot_scale_rad
        if np.linalg.norm(dpos) > cfg.max_step_translation_m * (1 + 1e-5):
            self._fail(f"translation {np.linalg.norm(dpos) * 1e3:.2f} mm > {cfg.max_step_translation_m * 1e3} mm")
        if np.linalg.norm(drot) > cfg.max_step_rotation_rad * (1 + 1e-5):
            self._fail(f"rotation {np.linalg.norm(drot):.4f} rad > {cfg.max_step_rotation_rad} rad")
        if self._lo is not None and reference is not None:
            ref = np.asarray(reference, np.float64)
            if ref.shape != (3,) or not np.all(np.isfinite(ref)):
                self._fail(f"reference position {ref.tolist()} is not 3 finite numbers")
            t = ref + dpos * travel
            out_t = np.maximum(self._lo - t, t - self._hi)
            out_r = np.maximum(self._lo - ref, ref - self._hi)
            if np.any(out_t > np.maximum(out_r, 0.0) + 1e-6):
                self._fail(f"target {np.round(t, 4).tolist()} further outside the box than {np.round(ref, 4).tolist()}")
