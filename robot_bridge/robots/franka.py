"""Franka (Panda / FR3) through franky-control (which bundles libfranka). Tested end to end against franky-sim.

control="cartesian": each action moves a Cartesian pose target (the delta is applied to the previous target, kept
within max_lead_m of the measured position) that franky streams to the arm, re-planning a jerk-limited (Ruckig)
trajectory at every command; hold = CartesianStopMotion (smooth braking). control="impedance": franky's
CartesianImpedanceTracker (torque control at 1 kHz in franky's C++ thread); each action moves its target; hold =
target set to the measured pose. The gripper is binary: a command above +threshold grasps, below -threshold opens.

realtime=False sets RealtimeConfig.Ignore: needed on a kernel without PREEMPT_RT and for franky-sim; on the real
arm keep the default (True) and a realtime kernel.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from robot_bridge.geometry import apply_delta, dh_forward
from robot_bridge.reach import Reach
from robot_bridge.robots.base import MissingExtraError, Robot, RobotError, anchor_pose
from robot_bridge.safety import SafetyConfig

log = logging.getLogger("robot_bridge.robots.franka")


_KEEP_ALIVE: list = []  # robots whose motion would not end at disconnect: never destroyed under a running motion

# Panda / FR3 kinematics (Franka's modified DH parameters: a_{i-1}, d_i, alpha_{i-1}); flange -> hand TCP: 0.1034 m
# along z, turned -pi/4 about z (franky's default end effector; checked against franky-sim's measured pose in
# tests/test_robot_franka.py)
PANDA_DH = ((0.0, 0.333, 0.0), (0.0, 0.0, -np.pi / 2), (0.0, 0.316, np.pi / 2), (0.0825, 0.0, np.pi / 2),
            (-0.0825, 0.384, -np.pi / 2), (0.0, 0.0, np.pi / 2), (0.088, 0.0, np.pi / 2))
PANDA_TOOL = np.array([[np.cos(-np.pi / 4), -np.sin(-np.pi / 4), 0.0, 0.0],
                       [np.sin(-np.pi / 4), np.cos(-np.pi / 4), 0.0, 0.0],
                       [0.0, 0.0, 1.0, 0.107 + 0.1034], [0.0, 0.0, 0.0, 1.0]])
HOMING_SETTLE_S = 5.0  # reset: how long the running motion may take to brake before homing gives up


def _import_franky():
    try:
        import franky
    except ImportError as e:
        raise MissingExtraError("franka", "franky", "franka") from e
    return franky


@dataclass(frozen=True)
class FrankaConfig:
    host: str = "172.16.0.2"  # the arm's FCI address; 127.0.0.1 for franky-sim
    control: str = "cartesian"  # cartesian | impedance
    realtime: bool = True  # False: RealtimeConfig.Ignore (no PREEMPT_RT kernel; franky-sim)
    # scales franky's velocity/acceleration/jerk limits (re-planning at each command)
    relative_dynamics_factor: float = 0.3
    max_lead_m: float = 0.03  # the target never runs further than this ahead of the measured position
    max_lead_rad: float = 0.02  # nor turns further than this ahead of the measured orientation (docs/ROBOTS.md)
    gripper: bool = True
    gripper_threshold: float = 0.5  # hysteresis: > +t grasps, < -t opens, in between keeps the last command
    gripper_speed: float = 0.05  # m/s
    gripper_poll_s: float = 0.05  # the opening width is read on a thread of its own: a slow read never stalls commands
    grasp_force: float = 20.0  # N
    translational_stiffness: float = 600.0  # impedance control, N/m
    rotational_stiffness: float = 30.0  # impedance control, Nm/rad
    auto_recover: bool = False  # on a controller error: recover_from_errors() and retry once (counted, reported)
    home_joints: tuple[float, ...] | None = None  # reset() moves here (joint motion) when set; None: reset holds
    homing_timeout_s: float = 60.0  # reset: a homing move still running after this is a fault

    def __post_init__(self):
        if self.control not in ("cartesian", "impedance"):
            raise ValueError(f"control: expected 'cartesian' or 'impedance', got {self.control!r}")
        if not 0 < self.relative_dynamics_factor <= 1:
            raise ValueError(f"relative_dynamics_factor: expected 0 < f <= 1, got {self.relative_dynamics_factor}")
        if self.home_joints is not None and len(self.home_joints) != 7:
            raise ValueError(f"home_joints: expected 7 joint angles (rad), got {len(self.home_joints)}")
        if not (self.max_lead_m > 0 and self.max_lead_rad > 0):
            raise ValueError(f"max_lead_m / max_lead_rad: expected > 0, got {self.max_lead_m}, {self.max_lead_rad}")
        if not 0 <= self.gripper_threshold < 1:
            raise ValueError(f"gripper_threshold: expected 0 <= t < 1, got {self.gripper_threshold}")
        if not self.homing_timeout_s > 0:
            raise ValueError(f"homing_timeout_s: expected > 0, got {self.homing_timeout_s}")


class FrankaRobot(Robot):
    name = "franka"
    config_class = FrankaConfig

    def __init__(self, config: FrankaConfig | None = None, cameras: dict | None = None,
                 safety: SafetyConfig | None = None, action_spec=None):
        """action_spec: ActionSpec() (eef_delta, the default), ActionSpec.eef_absolute() (run as eef_delta from the
        reference pose), ActionSpec.joint_absolute(7) (7 joint targets in rad and the gripper; streamed as franky
        JointMotions, re-planned at each command) or ActionSpec.joint_delta(7) (added to the last joint target)."""
        self.config = config or FrankaConfig()
        self.franky = _import_franky()
        super().__init__(cameras=cameras, safety=safety, action_spec=action_spec)
        self._q_target: np.ndarray | None = None  # joint_absolute: the last joint target (7,)
        self.robot = self.gripper = None
        self._target: tuple[np.ndarray, np.ndarray] | None = None  # last commanded pose (pos (3,), quat xyzw (4,))
        self._anchor: tuple[np.ndarray, np.ndarray] | None = None
        self._tracker = None
        self._grip_cmd = 0  # -1 open, +1 closed, 0 none yet
        self._grip_future = None
        self._grip_pending = 0
        self._width = 0.08
        self._q = np.zeros(9)
        self._max_width = 0.08
        self._grip_thread: threading.Thread | None = None
        self._grip_stop = threading.Event()
        self.gripper_error: str | None = None
        self.recoveries = 0
        self.lead_capped = 0  # commands whose start was pulled back towards a lagging arm
        self.last_error: str | None = None
        self._motion = "joint" if self.exec_spec.kind == "joint_absolute" else "cartesian"  # the running motion's type

    # Franka's 0.855 m reach from the shoulder (joint 2, 0.333 m above the base); flange + hand put the wrist centre
    # ~0.21 m above a downward-pointing end effector. Joint limits: the tighter of Panda's and FR3's per joint.
    reach = Reach(shoulder=(0.0, 0.0, 0.333), reach_m=0.855, wrist_offset_m=0.21)
    joint_limits = ((-2.7437, -1.7628, -2.8973, -3.0421, -2.8065, 0.5445, -2.8973),
                    (2.7437, 1.7628, 2.8973, -0.1518, 2.8065, 3.7525, 2.8973))
    action_kinds = ("eef_delta", "joint_absolute")

    @staticmethod
    def forward_kinematics(q) -> tuple[np.ndarray, np.ndarray]:
        """q (7,) rad -> the hand's (position (3,) m, quat xyzw (4,)) in the base frame (PANDA_DH)."""
        return dh_forward(np.asarray(q, np.float64)[:7], PANDA_DH, PANDA_TOOL)

    @classmethod
    def default_safety(cls) -> SafetyConfig:
        # box: every corner reached on franky-sim at the default dynamics (docs/ROBOTS.md); rotation per command:
        # 0.03 rad (0.6 rad/s at 20 Hz), slow enough for the arm to track at relative_dynamics_factor 0.3
        return SafetyConfig(workspace_low=(0.30, -0.30, 0.05), workspace_high=(0.60, 0.30, 0.50),
                            max_step_translation_m=0.01, max_step_rotation_rad=0.03)

    # ----- lifecycle -----
    def _connect(self) -> None:
        fr, c = self.franky, self.config
        rt = fr.RealtimeConfig.Enforce if c.realtime else fr.RealtimeConfig.Ignore
        try:
            self.robot = fr.Robot(c.host, realtime_config=rt)
            self.robot.relative_dynamics_factor = c.relative_dynamics_factor
            if self.robot.has_errors:
                self.robot.recover_from_errors()
            if c.gripper:
                self.gripper = fr.Gripper(c.host)
                self._width = float(self.gripper.width)
                self._max_width = float(self.gripper.max_width)
                self._start_gripper_reader()
        except Exception as e:  # noqa: BLE001 - franky raises its own exception types
            raise RobotError(f"franka at {c.host}: could not connect ({type(e).__name__}: {e})") from e
        self.get_state()

    def _disconnect(self) -> None:
        """Brake, wait for the motion to end, then drop the connection. franky's motion thread must not outlive its
        Robot object (that crashes the process): a robot still in control is kept alive instead of destroyed."""
        r, g = self.robot, self.gripper
        self._grip_stop.set()
        if self._grip_thread is not None:
            self._grip_thread.join(2.0)
            self._grip_thread = None
        try:
            if r is not None:
                self._hold()
                if r.is_in_control and not r.join_motion(timeout=10.0):
                    r.stop()
                    r.join_motion(timeout=5.0)
        except Exception as e:  # noqa: BLE001 - disconnecting anyway
            log.warning("franka disconnect: %s: %s", type(e).__name__, e)
        finally:
            if self._grip_future is not None:
                self._grip_future.wait(5.0)
                self._grip_future = None
            if r is not None and r.is_in_control:
                _KEEP_ALIVE.append((r, g))
            self.robot = self.gripper = self._tracker = None

    # ----- state -----
    def _pose(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.robot.current_cartesian_state.pose.end_effector_pose
        return np.asarray(p.translation, np.float64), np.asarray(p.quaternion, np.float64)

    def get_state(self) -> np.ndarray:
        """float32 (9,): eef position (3), quaternion xyzw (4), fingers (+w/2, -w/2) as robosuite's Panda."""
        if self.robot is None:
            raise RobotError("franka: not connected")
        self._check_errors()
        pos, quat = self._pose()
        if self.gripper is not None:
            self._poll_gripper()  # width: cached by the gripper thread, never a blocking read here
        q = np.asarray(self.robot.current_joint_state.position, np.float64)
        self._q = np.concatenate([q, [self._width / 2, self._width / 2]])
        return np.concatenate([pos, quat, [self._width / 2, -self._width / 2]]).astype(np.float32)

    def joint_positions(self) -> np.ndarray:
        """(9,) arm joints and finger positions as of the last get_state() (sim cameras pose their model with it)."""
        return self._q.copy()

    def arm_joints(self) -> np.ndarray:
        return self._q[:7].copy()

    def reference_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Where the next delta starts (base.anchor_pose): the last target, within max_lead_m / max_lead_rad of the
        arm."""
        pos, quat = self._pose()
        self._anchor, capped = anchor_pose(self._target, pos, quat, self.config.max_lead_m,
                                           self.config.max_lead_rad)
        if capped:
            self.lead_capped += 1
            log.debug("target more than %.0f mm ahead of the arm: start pulled back", self.config.max_lead_m * 1e3)
        return self._anchor

    def status(self) -> dict:
        return {"recoveries": self.recoveries, "lead_capped": self.lead_capped, "robot_error": self.last_error,
                "gripper_error": self.gripper_error, "gripper_width": self._width,
                "control": self.config.control}

    # ----- actions -----
    def reference_joints(self) -> np.ndarray:
        """joint_absolute: the last target, pulled to within 2 steps of the measured joints (a lagging arm does not
        wind the target up)."""
        q = np.asarray(self.robot.current_joint_state.position, np.float64)
        if self._q_target is None:
            return q
        lead = 2 * self.action_spec.max_step_joint_rad
        return np.clip(self._q_target, q - lead, q + lead)

    def _apply(self, action: np.ndarray) -> None:
        spec = self.exec_spec
        if spec.kind == "joint_absolute":
            q = np.delete(np.asarray(action, np.float64), spec.gripper_index % spec.dim)  # the 7 joints, in order
            fr = self.franky
            self._motion = "joint"
            self._call(lambda: self.robot.move(fr.JointMotion(fr.JointState(q), return_when_finished=False),
                                               asynchronous=True))
            self._q_target = q
            self._gripper(float(action[spec.gripper_index]))
            return
        anchor = self._anchor or self.reference_pose()
        self._anchor = None
        pos, quat = apply_delta(anchor[0], anchor[1], action[0:3] * spec.pos_scale_m, action[3:6] * spec.rot_scale_rad)
        self._call(lambda: self._send_target(pos, quat))
        self._target = (pos, quat)
        self._gripper(float(action[spec.gripper_index]))

    def _send_target(self, pos: np.ndarray, quat: np.ndarray) -> None:
        fr = self.franky
        target = fr.Affine(pos, quat)
        if self.config.control == "impedance":
            if self._tracker is None or not self.robot.is_in_control:
                self._tracker = fr.CartesianImpedanceTracker(
                    self.robot, translational_stiffness=self.config.translational_stiffness,
                    rotational_stiffness=self.config.rotational_stiffness)
            self._tracker.set_target(target)
        else:
            self._motion = "cartesian"
            self.robot.move(fr.CartesianMotion(target, fr.ReferenceType.Absolute, return_when_finished=False),
                            asynchronous=True)

    def _hold(self) -> None:
        if self.robot is None:
            return
        self._target = None  # the next command starts from the measured pose
        self._q_target = None
        if self.config.control == "impedance":
            if self._tracker is not None and self.robot.is_in_control:
                pos, quat = self._pose()
                self._call(lambda: self._tracker.set_target(self.franky.Affine(pos, quat)))
        elif self.robot.is_in_control:
            self._call(lambda: self.robot.move(self._stop_motion(), asynchronous=True))

    def _stop_motion(self, **kw):
        """A motion that brakes to a stop, of the running motion's type (franky refuses to switch type mid-motion)."""
        fr = self.franky
        return fr.JointStopMotion(**kw) if self._motion == "joint" else fr.CartesianStopMotion(**kw)

    def _stop(self) -> None:
        """E-stop: brake with the full dynamics limits, then end the motion (the controller holds the arm)."""
        self._target = None
        try:
            if self.config.control == "impedance" and self._tracker is not None:
                self._tracker.stop()
                self._tracker = None
            elif self.robot.is_in_control:
                self.robot.move(self._stop_motion(relative_dynamics_factor=1.0), asynchronous=True)
                self.robot.join_motion(timeout=1.0)
            if self.robot.is_in_control:
                self.robot.stop()
        except Exception as e:  # noqa: BLE001 - a reflex while braking still leaves the arm stopped
            self.last_error = f"{type(e).__name__}: {e}"
            log.error("franka e-stop: %s", self.last_error)

    def _release(self) -> None:
        self._target = None
        if self.robot is not None and self.robot.has_errors:
            if not self.robot.recover_from_errors():
                raise RobotError("franka: automatic error recovery failed")
        self.last_error = None

    def reset(self, seed: int | None = None) -> None:
        """Hold; with home_joints set, move there first (at the configured dynamics) and open the gripper. Blocks
        until done; the robot server uses start_reset instead (it keeps serving e-stop meanwhile)."""
        poll = self.start_reset(seed)
        while poll is not None and not poll():
            time.sleep(0.01)

    def start_reset(self, seed: int | None = None):
        """reset() in steps that never block for long: hold (brake the running motion), then the homing JointMotion
        started asynchronously; the returned poll function says when the arm is home (raises on a fault or after
        homing_timeout_s). An e-stop meanwhile brakes the joint motion (stop() knows the running motion's type)."""
        if seed is not None:
            raise NotImplementedError("franka: reset(seed) means nothing on hardware; reset without a seed")
        self.hold()
        if self.config.home_joints is None:
            return None
        fr, home = self.franky, list(self.config.home_joints)
        self._tracker = None
        t0 = time.monotonic()
        phase = {"name": "settle", "retried": False}

        def moving() -> bool | None:
            """True while a motion runs, False once it ended, None when it ended in a recovered error."""
            try:
                return not self.robot.poll_motion()  # franky 2: True once the motion has ended (despite its doc)
            except Exception as e:  # noqa: BLE001 - the motion's stored exception (a reflex): recover or raise
                self._on_error(f"{type(e).__name__}: {e}")
                return None

        def start_home() -> None:
            self._motion = "joint"
            self._call(lambda: self.robot.move(fr.JointMotion(home), asynchronous=True))
            phase["name"] = "home"

        def poll() -> bool:
            if self.stopped:
                raise RobotError("franka: homing interrupted by an e-stop")
            now, m = time.monotonic(), moving()
            if phase["name"] == "settle":
                if m:
                    if now - t0 > HOMING_SETTLE_S:
                        raise RobotError(f"franka: the arm did not come to rest within {HOMING_SETTLE_S} s before "
                                         f"homing")
                    return False
                start_home()
                return False
            if m is None:  # a reflex during homing, recovered (auto_recover): try the move once more
                if phase["retried"]:
                    raise RobotError(f"franka: homing failed again after recovery: {self.last_error}")
                phase["retried"] = True
                start_home()
                return False
            if m:
                if now - t0 > self.config.homing_timeout_s:
                    raise RobotError(f"franka: homing took longer than {self.config.homing_timeout_s} s")
                return False
            self._target = self._q_target = None
            self._motion = "joint" if self.exec_spec.kind == "joint_absolute" else "cartesian"
            if self.gripper is not None and self._grip_cmd != -1:
                self._grip_cmd = 0
                self._gripper(-1.0)
            return True

        return poll

    # ----- errors -----
    def _check_errors(self) -> None:
        if not self.robot.has_errors:
            return
        try:
            self.robot.poll_motion()  # raises the motion's exception, if one is stored
            msg = "controller reports errors"
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {e}"
        self._on_error(msg)

    def _on_error(self, msg: str) -> None:
        self.last_error = msg
        self._target = self._tracker = None
        if self.config.auto_recover and self.robot.recover_from_errors():
            self.recoveries += 1
            log.warning("franka: %s; recovered automatically (%d so far)", msg, self.recoveries)
            return
        raise RobotError(f"franka: {msg}")

    def _call(self, fn) -> None:
        """Run a franky call; a controller error is recovered and retried once (auto_recover) or raised."""
        try:
            fn()
            return
        except Exception as e:  # noqa: BLE001 - franky's exception types
            self._on_error(f"{type(e).__name__}: {e}")  # raises RobotError unless recovered
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            self.last_error = f"{type(e).__name__}: {e}"
            raise RobotError(f"franka: failed again after recovery: {self.last_error}") from e

    def _gripper(self, g: float) -> None:
        if self.gripper is None:
            return
        t = self.config.gripper_threshold
        want = 1 if g > t else (-1 if g < -t else self._grip_cmd)
        if want == 0 or want == self._grip_cmd:
            return
        self._grip_cmd = want
        self._grip_pending = want
        self._poll_gripper()

    def _start_gripper_reader(self) -> None:
        g, period = self.gripper, self.config.gripper_poll_s
        self._grip_stop.clear()

        def run() -> None:
            while not self._grip_stop.wait(period):
                try:
                    self._width = float(g.width)  # franky releases the GIL while it waits for the gripper
                    self.gripper_error = None
                except Exception as e:  # noqa: BLE001 - reported in the state, the arm keeps working
                    self.gripper_error = f"{type(e).__name__}: {e}"[:200]

        self._grip_thread = threading.Thread(target=run, name="franka-gripper-state", daemon=True)
        self._grip_thread.start()

    def _poll_gripper(self) -> None:
        """Start the pending gripper command once the previous one finished (gripper commands do not preempt)."""
        f = self._grip_future
        if f is not None and not f.wait(0):
            return
        self._grip_future = None
        if not self._grip_pending:
            return
        c = self.config
        if self._grip_pending > 0:
            self._grip_future = self.gripper.grasp_async(0.0, c.gripper_speed, c.grasp_force, epsilon_inner=0.1,
                                                         epsilon_outer=0.1)
        else:
            self._grip_future = self.gripper.move_async(self._max_width, c.gripper_speed)
        self._grip_pending = 0
