"""The robot-side `Robot` interface every arm adapter implements, and its observation / action specs.

    robot = make_robot("franka", FrankaConfig(host="172.16.0.2"), cameras={...}, safety=SafetyConfig(...))
    robot.connect()
    obs = robot.get_observation()        # {"images": {cam: uint8 (H, W, 3)}, "state": float32 (S,)}
    applied = robot.send_action(action)  # float32 (D,) in, the action actually applied (after safety) out
    robot.hold()                         # stop moving, keep the current pose (watchdog)
    robot.stop()                         # e-stop: stop as fast as the arm allows; send_action refused until release()
    robot.disconnect()

Actions (the shared schema, D = 7): delta end-effector position (3) and rotation vector (3) in the robot's base
frame, scaled by ActionSpec.pos_scale_m / rot_scale_rad per unit, and a gripper command in [-1, 1] (-1 open,
+1 closed). State (S = 9): end-effector position (3, m), orientation quaternion xyzw (4), gripper finger positions
(2, m; each half the opening width). Subclasses implement the `_`-prefixed methods; safety lives here, once.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from robot_bridge.geometry import axis_angle_to_quat, quat_conj, quat_mul, quat_normalize, quat_to_axis_angle
from robot_bridge.reach import Reach, check_workspace
from robot_bridge.safety import SafetyConfig, SafetyFilter

log = logging.getLogger("robot_bridge.robots")

# the observation state's and the eef_delta action's per-dim names; the policy side keeps the same lists
# (vla.features.STATE_NAMES, ACTION_NAMES: this package imports no vla), held equal by tests/test_lerobot.py
STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_qx", "eef_qy", "eef_qz", "eef_qw", "finger_left", "finger_right")
ACTION_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
EEF_ABSOLUTE_NAMES = ("x_m", "y_m", "z_m", "rx_rad", "ry_rad", "rz_rad", "gripper")
# what an action means (vla.features.ACTION_SPACES on the policy side), in the robot's base frame:
#   eef_delta      (7) position change (action units x pos_scale_m), rotation vector change (x rot_scale_rad), gripper
#   eef_absolute   (7) position (m), orientation as a rotation vector (rad, axis x angle), gripper
#   joint_delta    (n + 1) joint position changes (rad), gripper
#   joint_absolute (n + 1) joint position targets (rad), gripper
# gripper: -1 open, +1 closed. An adapter implements eef_delta and/or joint_absolute (Robot.action_kinds); the base
# class runs eef_absolute on the eef_delta path and joint_delta on the joint_absolute path (EXECUTED_AS), converting
# each action against the reference the next command starts from, before the safety layer sees it.
ACTION_KINDS = ("eef_delta", "eef_absolute", "joint_delta", "joint_absolute")
EXECUTED_AS = {"eef_delta": "eef_delta", "eef_absolute": "eef_delta", "joint_delta": "joint_absolute",
               "joint_absolute": "joint_absolute"}
ACTION_UNITS = {"eef_delta": ("action", "action", "action", "action", "action", "action", "gripper"),
                "eef_absolute": ("m", "m", "m", "rad", "rad", "rad", "gripper")}


def hold_for(kind: str) -> str:
    """What "stay where you are" is for an action kind (the control loop's LoopConfig.hold): zero deltas ("zeros"),
    or the last commanded absolute target ("last")."""
    return "zeros" if kind.endswith("_delta") else "last"


class RobotError(RuntimeError):
    """The arm or its controller reported a fault (reflex, protective stop, lost connection)."""


class RobotStopped(RobotError):
    """send_action after stop() (e-stop) and before release()."""


class MissingExtraError(ImportError):
    """An adapter's SDK is not installed; the message names the extra to install."""

    def __init__(self, robot: str, module: str, extra: str):
        super().__init__(f"robot {robot!r} needs the Python module {module!r}: pip install 'vla-stack[{extra}]'")
        self.extra = extra


@dataclass(frozen=True)
class ActionSpec:
    dim: int = 7
    kind: str = "eef_delta"  # delta eef position (3), delta rotation vector (3), gripper (1)
    pos_scale_m: float = 0.05  # metres per action unit (robosuite OSC_POSE: 0.05)
    rot_scale_rad: float = 0.5  # radians per action unit (robosuite OSC_POSE: 0.5)
    low: float = -1.0
    high: float = 1.0
    gripper_index: int = 6  # -1 open, +1 closed
    names: tuple[str, ...] = ACTION_NAMES

    # joint_absolute: largest change of a joint target per command (0.7 rad/s at 20 Hz)
    max_step_joint_rad: float = 0.035

    def __post_init__(self):
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"ActionSpec.kind: expected one of {list(ACTION_KINDS)}, got {self.kind!r}")
        if self.kind in ("eef_delta", "eef_absolute") and (self.dim != 7 or self.gripper_index not in (6, -1)):
            raise ValueError(f"ActionSpec: kind {self.kind!r} has dim 7 (position, rotation vector, gripper last), got "
                             f"dim {self.dim}, gripper_index {self.gripper_index}")
        if self.kind.startswith("joint") and not (2 <= self.dim <= 64 and -self.dim <= self.gripper_index < self.dim):
            raise ValueError(f"ActionSpec: kind {self.kind!r} needs dim 2..64 and a gripper_index inside it, got dim "
                             f"{self.dim}, gripper_index {self.gripper_index}")
        if not (self.pos_scale_m > 0 and self.rot_scale_rad > 0):
            raise ValueError(f"ActionSpec: pos_scale_m and rot_scale_rad must be > 0, got {self.pos_scale_m}, "
                             f"{self.rot_scale_rad}")
        if not self.low < self.high:
            raise ValueError(f"ActionSpec: low must be < high, got {self.low}, {self.high}")
        if not (np.isfinite(self.max_step_joint_rad) and 0 < self.max_step_joint_rad <= 0.5):
            raise ValueError(f"ActionSpec: max_step_joint_rad must be a finite number in (0, 0.5] rad, got "
                             f"{self.max_step_joint_rad}")

    def to_dict(self) -> dict:
        return {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()},
                "units": list(self.units)}

    @property
    def hold(self) -> str:
        return hold_for(self.kind)

    @property
    def units(self) -> tuple[str, ...]:
        """Per-dim unit: "m", "rad", "action" (x pos_scale_m or rot_scale_rad), "gripper" (-1 open .. +1 closed)."""
        if self.kind in ACTION_UNITS:
            return ACTION_UNITS[self.kind]
        return tuple("gripper" if i == self.gripper_index % self.dim else "rad" for i in range(self.dim))

    @property
    def executes(self) -> str:
        """The kind an adapter runs this one as (EXECUTED_AS): eef_delta or joint_absolute."""
        return EXECUTED_AS[self.kind]

    def executed(self) -> "ActionSpec":
        """This spec as the adapter and the safety layer see it (same dim, scales and limits, kind = executes)."""
        if self.executes == self.kind:
            return self
        names = ACTION_NAMES if self.executes == "eef_delta" else self.names
        return replace(self, kind=self.executes, names=names)

    @classmethod
    def joint_absolute(cls, n_joints: int, **kw) -> "ActionSpec":
        names = tuple(f"q{i + 1}" for i in range(n_joints)) + ("gripper",)
        return cls(dim=n_joints + 1, kind="joint_absolute", gripper_index=n_joints, names=names, **kw)

    @classmethod
    def joint_delta(cls, n_joints: int, **kw) -> "ActionSpec":
        names = tuple(f"dq{i + 1}" for i in range(n_joints)) + ("gripper",)
        return cls(dim=n_joints + 1, kind="joint_delta", gripper_index=n_joints, names=names, **kw)

    @classmethod
    def eef_absolute(cls, **kw) -> "ActionSpec":
        return cls(kind="eef_absolute", names=EEF_ABSOLUTE_NAMES, **kw)

    @classmethod
    def of_kind(cls, kind: str, n_joints: int | None) -> "ActionSpec":
        """The default spec of `kind` for an arm with n_joints (needed by the joint kinds)."""
        if kind not in ACTION_KINDS:
            raise ValueError(f"action space: expected one of {list(ACTION_KINDS)}, got {kind!r}")
        if kind.startswith("joint"):
            if not n_joints:
                raise ValueError(f"action space {kind!r}: the arm's joint count is not known")
            return getattr(cls, kind)(n_joints)
        return cls() if kind == "eef_delta" else cls.eef_absolute()


@dataclass(frozen=True)
class ObservationSpec:
    cameras: dict = field(default_factory=dict)  # name -> [H, W, 3]
    state_dim: int = 9
    state_names: tuple[str, ...] = STATE_NAMES

    def to_dict(self) -> dict:
        return {"cameras": {k: list(v) for k, v in self.cameras.items()}, "state_dim": self.state_dim,
                "state_names": list(self.state_names)}


def anchor_pose(target: tuple[np.ndarray, np.ndarray] | None, pos: np.ndarray, quat: np.ndarray,
                max_lead_m: float, max_lead_rad: float) -> tuple[tuple[np.ndarray, np.ndarray], bool]:
    """Where the next delta starts for a position-streaming arm: the last target (pos (3,), quat xyzw (4,)) pulled to
    within max_lead_m of the measured position and within max_lead_rad of the measured orientation, or the measured
    pose when there is no target (after a hold). Returns (anchor, capped). Anchoring on the target makes deltas add
    up exactly while the arm keeps up; the caps keep a lagging or blocked arm from winding the target up, so when
    commands stop the arm goes on by at most the caps (docs/ROBOTS.md, "Faults and what the arm does")."""
    pos, quat = np.asarray(pos, np.float64), quat_normalize(quat)
    if target is None:
        return (pos, quat), False
    t_pos, t_quat = np.asarray(target[0], np.float64), quat_normalize(target[1])
    capped = False
    lead = t_pos - pos
    n = float(np.linalg.norm(lead))
    if n > max_lead_m:
        t_pos, capped = pos + lead * (max_lead_m / n), True
    rot = quat_to_axis_angle(quat_mul(t_quat, quat_conj(quat)))  # measured -> target, base frame (3,)
    angle = float(np.linalg.norm(rot))
    if angle > max_lead_rad:
        t_quat, capped = quat_normalize(quat_mul(axis_angle_to_quat(rot * (max_lead_rad / angle)), quat)), True
    return (t_pos, t_quat), capped


class Robot(ABC):
    """Base class of the arm adapters. Not thread-safe: one thread (the robot server's) drives it."""

    name = "robot"
    #: the adapter's config dataclass (robot_class returns it beside the class)
    config_class: type | None = None
    #: "realtime": the arm moves on its own clock (hold actively stops it); "stepped": a simulator that advances
    #: only when an action is applied (hold does nothing: time stands still).
    clock = "realtime"
    #: the arm's reach model: the configured workspace box is checked against it at construction (None: no check)
    reach: Reach | None = None
    #: (low (n,), high (n,)) rad: the pose monitor's joint limits, with arm_joints(); None: not checked
    joint_limits: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    #: the action kinds this adapter implements in _apply (eef_delta and/or joint_absolute); supported_kinds() adds
    #: the ones the base class converts to them. Another kind is refused when the adapter is built.
    action_kinds: tuple[str, ...] = ("eef_delta",)
    #: how long (s) the arm may go on with the last command before the server's watchdog stops it (the server sets
    #: it: watchdog + one state period); velocity-mode adapters clip their box against that travel (travel())
    stop_horizon_s: float | None = None
    #: measured positions further than this from the base, or fingers wider than MAX_FINGER_M, are not a measurement
    MAX_REACH_M = 3.0
    MAX_FINGER_M = 0.2

    @classmethod
    def supported_kinds(cls) -> tuple[str, ...]:
        return tuple(k for k in ACTION_KINDS if EXECUTED_AS[k] in cls.action_kinds)

    def __init__(self, cameras: dict | None = None, safety: SafetyConfig | None = None,
                 action_spec: ActionSpec | None = None):
        self.cameras = dict(cameras or {})  # name -> robot_bridge.cameras.Camera
        self.action_spec = action_spec or ActionSpec()  # what commands carry (the policy's action space)
        if self.action_spec.kind not in self.supported_kinds():
            raise ValueError(f"action space: {self.name} executes {list(self.supported_kinds())}, not "
                             f"{self.action_spec.kind!r}")
        self.exec_spec = self.action_spec.executed()  # what _apply and the safety layer see
        if self.exec_spec.kind == "joint_absolute" and (
                self.joint_limits is None or self.action_spec.dim != len(self.joint_limits[0]) + 1):
            raise ValueError(f"action space: {self.action_spec.kind} for {self.name} "
                             "needs dim = its joints + 1 (gripper)"
                             + (f" = {len(self.joint_limits[0]) + 1}" if self.joint_limits else "") +
                             f", got {self.action_spec.dim}")
        self.safety = SafetyFilter(safety or self.default_safety(), self.exec_spec)
        cfg = self.safety.config
        if cfg.check_reach:
            check_workspace(self.name, self.reach, cfg.workspace_low, cfg.workspace_high)
        self.connected = False
        self.stopped = False  # e-stop latched until release()
        self._lock = threading.Lock()

    # ----- what subclasses provide -----
    @classmethod
    def default_safety(cls) -> SafetyConfig:
        return SafetyConfig()

    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _disconnect(self) -> None: ...

    @abstractmethod
    def get_state(self) -> np.ndarray: ...  # float32 (S,), cheap: published at the server's rate

    @abstractmethod
    def reference_pose(self) -> tuple[np.ndarray, np.ndarray]: ...  # (pos (3,), quat xyzw (4,)) the next delta moves

    @abstractmethod
    def _apply(self, action: np.ndarray) -> None: ...  # a safe action, float32 (D,)

    @abstractmethod
    def _hold(self) -> None: ...

    @abstractmethod
    def _stop(self) -> None: ...

    def _release(self) -> None:
        """Clear a latched e-stop / fault on the controller (e.g. automatic error recovery)."""

    def arm_joints(self) -> np.ndarray | None:
        """The arm's joint positions (n,) rad as of the last get_state(), for the pose monitor; None: not known."""
        return None

    #: forward kinematics q (n,) -> (eef position (3,) m, quat xyzw (4,)) in the base frame, in the frame get_state
    #: reports; joint modes bound the end effector's step and keep it in the box with it. None: not known.
    forward_kinematics = None

    def travel(self) -> float:
        """How many times a command's translation the arm may cover before it can be stopped: 1 for a
        position-streaming arm (it stops at the target); more for a velocity-mode one (UR speedL)."""
        return 1.0

    def measurement_problem(self, state) -> str | None:
        """None when a measured state (S,) and the joints are finite and in range; else a sentence saying what is
        wrong (NaN/inf, a quaternion that is not unit length, a position or finger opening no arm reaches)."""
        s = np.asarray(state, np.float64) if state is not None else None
        if s is None or s.ndim != 1 or not np.all(np.isfinite(s)):
            return f"measured state {None if s is None else s.tolist()} is not finite"
        if len(s) >= 9 and self.observation_spec.state_names[:9] == STATE_NAMES:
            if np.linalg.norm(s[:3]) > self.MAX_REACH_M:
                return f"measured end effector {np.round(s[:3], 3).tolist()} is over {self.MAX_REACH_M} m from the base"
            n = float(np.linalg.norm(s[3:7]))
            if not 0.9 <= n <= 1.1:
                return f"measured orientation {np.round(s[3:7], 4).tolist()} is not a unit quaternion (norm {n:.3f})"
            if np.any(np.abs(s[7:9]) > self.MAX_FINGER_M):
                return f"measured fingers {np.round(s[7:9], 4).tolist()} outside +-{self.MAX_FINGER_M} m"
        q = self.arm_joints() if self.joint_limits is not None else None
        if q is not None and not np.all(np.isfinite(np.asarray(q, np.float64))):
            return f"measured joints {np.asarray(q).tolist()} are not finite"
        return None

    def pose_excess(self, state) -> dict:
        """Per axis and per joint, how far a measured state (S,) is past the pose monitor's limits: {"workspace":
        (3,) m beyond the box plus pose_tolerance_m, or None without a box; "joints": (n,) rad closer than
        joint_limit_margin_rad to a limit (or past it), or None}; <= 0 is within."""
        cfg = self.safety.config
        ws = q = None
        if cfg.workspace_low is not None:
            pos = np.asarray(state[:3], np.float64)
            lo, hi = np.asarray(cfg.workspace_low), np.asarray(cfg.workspace_high)
            ws = np.maximum(lo - pos, pos - hi) - cfg.pose_tolerance_m
        joints = self.arm_joints() if self.joint_limits is not None else None
        if joints is not None:
            lo = np.asarray(self.joint_limits[0]) + cfg.joint_limit_margin_rad
            hi = np.asarray(self.joint_limits[1]) - cfg.joint_limit_margin_rad
            q = np.maximum(lo - joints, joints - hi)
        return {"workspace": ws, "joints": q}

    def pose_violation(self, state, allowance: dict | None = None, slack: float = 1e-3) -> dict | None:
        """The pose monitor's check of a measured state (S,): None when the measurement is sound and every axis and
        joint is within its limits, or within what `allowance` ({"workspace": (3,), "joints": (n,)}, per axis and
        joint, as pose_excess) permits plus `slack`; else {"kind": "measurement" | "workspace" | "joint_limits",
        "index", "excess" (m or rad past what was allowed), "detail": a sentence}. Every axis and joint is checked,
        whatever else is out."""
        bad = self.measurement_problem(state)
        if bad is not None:
            return {"kind": "measurement", "index": None, "excess": float("inf"), "detail": bad}
        cfg = self.safety.config
        ex = self.pose_excess(state)
        allowance = allowance or {}
        worst = None
        for kind, name in (("workspace", "workspace"), ("joints", "joint_limits")):
            e = ex[kind]
            if e is None:
                continue
            allow = allowance.get(kind)
            allow = np.zeros_like(e) if allow is None else np.asarray(allow, np.float64)
            over = e - np.where(allow > 0, allow + slack, 0.0)
            i = int(np.argmax(over))
            if over[i] > 0 and (worst is None or over[i] > worst["excess"]):
                if kind == "workspace":
                    pos = np.asarray(state[:3], np.float64)
                    box = f"{list(cfg.workspace_low)}..{list(cfg.workspace_high)}"
                    detail = (f"end effector {np.round(pos, 3).tolist()} is {e[i] + cfg.pose_tolerance_m:.3f} m "
                              f"outside the workspace box along {'xyz'[i]} {box} (tolerance {cfg.pose_tolerance_m} m"
                              + (f", {allow[i]:.3f} m allowed since the release)" if allow[i] > 0 else ")"))
                else:
                    q = self.arm_joints()
                    detail = (f"joint {i + 1} at {q[i]:.3f} rad is within {cfg.joint_limit_margin_rad} rad of (or "
                              f"past) its limits [{self.joint_limits[0][i]}, {self.joint_limits[1][i]}]"
                              + (f" ({allow[i]:.3f} rad allowed since the release)" if allow[i] > 0 else ""))
                worst = {"kind": name, "index": i, "excess": float(over[i]), "detail": detail}
        return worst

    def reset(self, seed: int | None = None) -> None:
        """Start an episode. Hardware: hold where it is (no motion). Simulators reset the scene."""
        self.hold()

    def start_reset(self, seed: int | None = None):
        """Begin a reset without blocking the caller's thread for long: None when it is done already, else a poll
        function, called on the same thread until it returns True (it raises when the reset failed). The robot server
        polls it every tick, so e-stop, watchdog and pose monitor keep their latency during a long move (homing).
        Default: the whole reset() at once."""
        self.reset(seed=seed)
        return None

    def status(self) -> dict:
        """Extra fields for the state publication (episode flags for simulators, controller errors)."""
        return {}

    @property
    def observation_spec(self) -> ObservationSpec:
        shapes = {n: list(c.shape) for n, c in self.cameras.items()}
        return ObservationSpec(cameras=shapes)

    @property
    def horizon(self) -> int | None:
        return None

    @property
    def instruction(self) -> str | None:
        """A task instruction the robot side knows (simulators); None for hardware."""
        return None

    # ----- the interface -----
    def connect(self) -> "Robot":
        if self.connected:
            return self
        self._connect()
        for cam in self.cameras.values():
            if hasattr(cam, "attach"):
                cam.attach(self)
            cam.start()
        self.connected = True
        log.info("%s connected%s", self.name, f" (cameras: {', '.join(self.cameras)})" if self.cameras else "")
        return self

    def disconnect(self) -> None:
        if not self.connected:
            return
        for cam in self.cameras.values():
            try:
                cam.stop()
            except Exception:  # noqa: BLE001 - one camera failing to close must not keep the arm connected
                log.exception("camera stop failed")
        try:
            self._disconnect()
        finally:
            self.connected = False

    def snapshot(self) -> dict:
        """On the robot's thread: {"state": float32 (S,), "t": time.time(), "images": frames that already exist
        (a simulator's render of its last step)}. Cameras are read separately (read_cameras), off this thread."""
        return {"state": self.get_state(), "t": time.time(), "images": {}}

    def read_cameras(self) -> dict:
        """{cam: uint8 (H, W, 3) upright RGB}: the newest frame of each camera. Safe to call from another thread."""
        return {n: c.read() for n, c in self.cameras.items()}

    def get_observation(self) -> dict:
        """{"images": {cam: uint8 (H, W, 3) upright RGB}, "state": float32 (S,)}."""
        snap = self.snapshot()
        return {"images": {**snap["images"], **self.read_cameras()}, "state": snap["state"]}

    def send_action(self, action) -> np.ndarray:
        """Filter `action` through the safety layer and apply it; returns the applied action float32 (D,), in the
        executed space (exec_spec: eef_absolute comes back as the eef_delta that ran, joint_delta as joint targets).

        Raises safety.UnsafeAction (non-finite, wrong shape: nothing applied), RobotStopped after stop(),
        RobotError when the arm faults.
        """
        if not self.connected:
            raise RobotError(f"{self.name}: send_action before connect()")
        if self.stopped:
            raise RobotStopped(f"{self.name}: e-stopped; release() first")
        kind = self.action_spec.kind
        if self.exec_spec.kind == "joint_absolute":
            ref = self.safety.reference(self.reference_joints(), self.exec_spec.dim - 1, "joint position")
            if kind == "joint_delta":
                action = self._joint_delta_to_targets(self.safety.check(action), ref)
            fk = self.forward_kinematics
            safe = self.safety.filter_joints(action, ref, self.joint_limits, fk=fk)
            self.safety.verify(safe, ref, joint_limits=self.joint_limits, fk=fk)
        else:
            pos, quat = self.reference_pose()
            self.safety.reference(quat, 4, "end-effector orientation")
            if kind == "eef_absolute":
                action = self._eef_absolute_to_delta(self.safety.check(action), pos, quat)
            travel = self.travel()
            safe = self.safety.filter(action, pos, travel=travel)
            self.safety.verify(safe, pos, travel=travel)
        self._apply(safe)  # nothing between the final check and the arm
        return safe

    def _joint_delta_to_targets(self, a: np.ndarray, ref_q: np.ndarray) -> np.ndarray:
        """joint_delta (n + 1,) -> joint_absolute (n + 1,): the reference joints (the last target, else the measured
        ones) plus the deltas; the gripper passes through."""
        g = self.exec_spec.gripper_index % self.exec_spec.dim
        out = a.copy()
        joints = np.delete(np.arange(len(a)), g)
        out[joints] = np.asarray(ref_q, np.float64) + a[joints]
        return out

    def _eef_absolute_to_delta(self, a: np.ndarray, pos: np.ndarray, quat: np.ndarray) -> np.ndarray:
        """eef_absolute (7,) -> eef_delta (7,) from the reference pose (pos (3,), quat xyzw (4,)): the move to the
        target in action units (the safety layer then clips it to the action range and its step limits)."""
        spec = self.exec_spec
        angle = float(np.linalg.norm(a[3:6]))
        if not angle <= 2 * np.pi + 1e-6:  # larger angles lose the rotation's precision (and inf its meaning)
            self.safety.reject(f"action: eef_absolute rotation vector {np.round(a[3:6], 3).tolist()} has norm "
                               f"{angle:.3g}; expected an angle of at most 2 pi rad")
        d_pos = (a[:3] - np.asarray(pos, np.float64)) / spec.pos_scale_m
        d_rot = quat_to_axis_angle(quat_mul(axis_angle_to_quat(a[3:6]), quat_conj(quat_normalize(quat))))
        out = np.concatenate([d_pos, d_rot / spec.rot_scale_rad, a[6:7]])
        if not np.all(np.isfinite(out)):
            self.safety.reject(f"action: eef_absolute target {np.round(a, 3).tolist()} gives a non-finite step")
        return out

    def reference_joints(self) -> np.ndarray:
        """joint_absolute: where the next target's step limit counts from (the last target, else the measured
        joints)."""
        q = self.arm_joints()
        if q is None:
            raise RobotError(f"{self.name}: joint_absolute needs measured joint positions")
        return q

    def hold(self) -> None:
        if self.connected:
            self._hold()

    def stop(self) -> None:
        """E-stop: stop now and refuse actions until release()."""
        self.stopped = True
        if self.connected:
            self._stop()

    def release(self) -> None:
        self._release()
        self.stopped = False

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.disconnect()
