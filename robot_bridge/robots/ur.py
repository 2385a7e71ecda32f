"""Universal Robots (CB3 / e-Series) through ur-rtde. UNTESTED ON HARDWARE: the command translation is tested
against recording fakes of the SDK (tests/test_arm_adapters.py); no UR simulator runs here.

mode="servoL": each action moves a TCP pose target (base frame, metres and rotation vector, as URScript's poses)
    that servoL tracks over `control_period_s` with `lookahead_time` and `gain`; hold = servoStop.
mode="speedL": each action becomes a TCP velocity (delta / control_period_s, m/s and rad/s) for speedL; hold =
    speedStop. The arm keeps moving at the last velocity until the next command or the watchdog's hold (plus the
    braking distance), so the box is clipped against that whole travel (travel()), not one period's.
E-stop: servoStop/speedStop at estop_deceleration; if that raises, triggerProtectiveStop (the controller's own
stop) and the e-stop reports the failure.
A binary gripper on a standard digital output (a pneumatic gripper; HIGH = closed) is optional.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from robot_bridge.geometry import apply_delta, axis_angle_to_quat, quat_to_axis_angle
from robot_bridge.reach import Reach
from robot_bridge.robots.base import MissingExtraError, Robot, RobotError, anchor_pose
from robot_bridge.safety import SafetyConfig

log = logging.getLogger("robot_bridge.robots.ur")


@dataclass(frozen=True)
class URConfig:
    host: str = "192.168.1.10"
    mode: str = "servoL"  # servoL | speedL
    rtde_frequency_hz: float = 500.0  # RTDE rate: 500 Hz e-Series, 125 Hz CB3
    control_period_s: float = 0.05  # how often commands arrive (20 Hz): servoL's `time`, speedL's delta -> velocity
    lookahead_time: float = 0.1  # servoL smoothing, 0.03..0.2 s
    gain: float = 300.0  # servoL proportional gain, 100..2000
    acceleration: float = 0.5  # speedL tool acceleration, m/s^2
    stop_deceleration: float = 2.0  # servoStop/speedStop on hold, m/s^2
    estop_deceleration: float = 10.0  # on e-stop
    max_lead_m: float = 0.03  # the target never runs further than this ahead of the measured position
    max_lead_rad: float = 0.02  # nor turns further than this ahead of the measured orientation (docs/ROBOTS.md)
    gripper_digital_out: int | None = None  # standard digital output of a binary gripper (HIGH closed); None: none
    gripper_threshold: float = 0.5
    gripper_open_width_m: float = 0.08  # reported finger positions (the output is not a measurement)

    def __post_init__(self):
        if self.mode not in ("servoL", "speedL"):
            raise ValueError(f"mode: expected 'servoL' or 'speedL', got {self.mode!r}")
        if not 0.03 <= self.lookahead_time <= 0.2:
            raise ValueError(f"lookahead_time: expected 0.03..0.2 s (ur-rtde's range), got {self.lookahead_time}")
        if not 100 <= self.gain <= 2000:
            raise ValueError(f"gain: expected 100..2000 (ur-rtde's range), got {self.gain}")
        if not (self.max_lead_m > 0 and self.max_lead_rad > 0):
            raise ValueError(f"max_lead_m / max_lead_rad: expected > 0, got {self.max_lead_m}, {self.max_lead_rad}")
        if not 0.002 <= self.control_period_s <= 1.0:
            raise ValueError(f"control_period_s: expected 0.002..1 s, got {self.control_period_s}")


def _import_sdk():
    try:
        import rtde_control
        import rtde_io
        import rtde_receive
    except ImportError as e:
        raise MissingExtraError("ur", "rtde_control", "ur") from e

    class SDK:
        RTDEControlInterface = rtde_control.RTDEControlInterface
        RTDEReceiveInterface = rtde_receive.RTDEReceiveInterface
        RTDEIOInterface = rtde_io.RTDEIOInterface

    return SDK


class URRobot(Robot):
    name = "ur"
    config_class = URConfig

    def __init__(self, config: URConfig | None = None, cameras: dict | None = None,
                 safety: SafetyConfig | None = None, sdk=None, action_spec=None):
        """sdk: an object with RTDEControlInterface / RTDEReceiveInterface / RTDEIOInterface (default: ur-rtde)."""
        self.config = config or URConfig()
        self.sdk = sdk or _import_sdk()
        super().__init__(cameras=cameras, safety=safety, action_spec=action_spec)  # eef_delta or eef_absolute
        self.ctrl = self.recv = self.io = None
        self._target: tuple[np.ndarray, np.ndarray] | None = None
        self._anchor = None
        self._closed = False
        self.lead_capped = 0

    # UR5e: 0.85 m reach from the shoulder (0.1625 m above the base); wrist 3 + flange + a gripper ~0.2 m
    reach = Reach(shoulder=(0.0, 0.0, 0.1625), reach_m=0.85, wrist_offset_m=0.2)

    @classmethod
    def default_safety(cls) -> SafetyConfig:
        # a box in front of the base (-y), above the table, within the UR5e's reach (docs/ROBOTS.md)
        return SafetyConfig(workspace_low=(-0.35, -0.55, 0.05), workspace_high=(0.35, -0.20, 0.35),
                            max_step_translation_m=0.01, max_step_rotation_rad=0.03)

    # ----- lifecycle -----
    def _connect(self) -> None:
        c = self.config
        try:
            self.ctrl = self.sdk.RTDEControlInterface(c.host, c.rtde_frequency_hz)
            self.recv = self.sdk.RTDEReceiveInterface(c.host, c.rtde_frequency_hz)
            if c.gripper_digital_out is not None:
                self.io = self.sdk.RTDEIOInterface(c.host)
        except Exception as e:  # noqa: BLE001 - ur-rtde raises RuntimeError on connection trouble
            raise RobotError(f"ur at {c.host}: could not connect ({type(e).__name__}: {e})") from e

    def _disconnect(self) -> None:
        try:
            self._hold()
            self.ctrl.stopScript()
        finally:
            for iface in (self.ctrl, self.recv, self.io):
                if iface is not None and hasattr(iface, "disconnect"):
                    iface.disconnect()
            self.ctrl = self.recv = self.io = None

    # ----- state -----
    def _pose(self) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(self.recv.getActualTCPPose(), np.float64)  # [x, y, z, rx, ry, rz], m and rotation vector
        if p.shape != (6,):
            raise RobotError(f"ur: getActualTCPPose returned {p.tolist()}; expected 6 numbers")
        return p[:3], axis_angle_to_quat(p[3:])

    def get_state(self) -> np.ndarray:
        if self.recv is None:
            raise RobotError("ur: not connected")
        if self.recv.isProtectiveStopped() or self.recv.isEmergencyStopped():
            raise RobotError("ur: the controller is in a protective or emergency stop")
        pos, quat = self._pose()
        w = 0.0 if self._closed else self.config.gripper_open_width_m
        return np.concatenate([pos, quat, [w / 2, -w / 2]]).astype(np.float32)

    def reference_pose(self) -> tuple[np.ndarray, np.ndarray]:
        pos, quat = self._pose()
        self._anchor, capped = anchor_pose(self._target, pos, quat, self.config.max_lead_m,
                                           self.config.max_lead_rad)
        self.lead_capped += capped
        return self._anchor

    def status(self) -> dict:
        return {"mode_ur": self.config.mode, "lead_capped": self.lead_capped, "gripper_closed": self._closed}

    # ----- actions -----
    def _apply(self, action: np.ndarray) -> None:
        c, spec = self.config, self.exec_spec
        anchor = self._anchor or self.reference_pose()
        self._anchor = None
        dpos, drot = action[0:3] * spec.pos_scale_m, action[3:6] * spec.rot_scale_rad
        pos, quat = apply_delta(anchor[0], anchor[1], dpos, drot)
        if c.mode == "servoL":
            pose = [*pos.tolist(), *quat_to_axis_angle(quat).tolist()]
            # speed and acceleration are unused by servoL; time: until the next command
            ok = self.ctrl.servoL(pose, 0.0, 0.0, c.control_period_s, c.lookahead_time, c.gain)
            self._target = (pos, quat)
        else:
            xd = [*(dpos / c.control_period_s).tolist(), *(drot / c.control_period_s).tolist()]
            ok = self.ctrl.speedL(xd, c.acceleration, 0.0)
            self._target = None  # velocity control: every delta starts at the measured pose
        if ok is False:
            raise RobotError(f"ur: {c.mode} was refused by the controller")
        self._gripper(float(action[spec.gripper_index]))

    def _gripper(self, g: float) -> None:
        if self.io is None:
            return
        t = self.config.gripper_threshold
        want = True if g > t else (False if g < -t else self._closed)
        if want != self._closed:
            self.io.setStandardDigitalOut(self.config.gripper_digital_out, want)
            self._closed = want

    def _stop_motion(self, deceleration: float) -> None:
        if self.config.mode == "servoL":
            self.ctrl.servoStop(deceleration)
        else:
            self.ctrl.speedStop(deceleration)

    def travel(self) -> float:
        """speedL: a velocity runs until the next command, or until the watchdog holds the arm (stop_horizon_s, set
        by the robot server: watchdog + one state period; unset: two control periods), then brakes at
        stop_deceleration; as a multiple of one command's translation at the step limit. servoL: 1."""
        c = self.config
        if c.mode != "speedL":
            return 1.0
        horizon = self.stop_horizon_s if self.stop_horizon_s else 2 * c.control_period_s
        v = self.safety.config.max_step_translation_m / c.control_period_s  # the fastest a command can ask, m/s
        return max(1.0, horizon / c.control_period_s) + v / (2 * c.stop_deceleration * c.control_period_s)

    def _hold(self) -> None:
        self._target = None
        if self.ctrl is not None:
            self._stop_motion(self.config.stop_deceleration)

    def _stop(self) -> None:
        self._target = None
        try:
            self._stop_motion(self.config.estop_deceleration)
        except Exception as e:  # noqa: BLE001 - ur-rtde raises RuntimeError: the controller's own stop instead
            what = f"{type(e).__name__}: {e}"
            try:
                self.ctrl.triggerProtectiveStop()
                raise RobotError(f"ur: {self.config.mode} stop raised {what}; protective stop triggered") from e
            except RobotError:
                raise
            except Exception as e2:  # noqa: BLE001
                raise RobotError(f"ur: {self.config.mode} stop raised {what}; triggerProtectiveStop raised "
                                 f"{type(e2).__name__}: {e2}") from e
