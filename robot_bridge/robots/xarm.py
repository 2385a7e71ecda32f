"""UFACTORY xArm / Lite 6 through xarm-python-sdk in servo Cartesian mode (mode 1). UNTESTED ON HARDWARE: the
command translation is tested against a recording fake of XArmAPI (tests/test_arm_adapters.py).

Units on the SDK side: millimetres and roll/pitch/yaw (radians here, is_radian=True; fixed-axis XYZ: R = Rz(yaw)
Ry(pitch) Rx(roll)); the shared schema is metres and quaternions. Each action moves a pose target that
set_servo_cartesian jumps to at once (no trajectory: the per-step limits of the safety layer are the speed limit).
Hold = the measured pose as the servo target; e-stop = set_state(4) (stop), undone by release. The xArm gripper is
continuous: command -1..+1 maps to gripper_open..gripper_closed (SDK units 850 open .. 0 closed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from robot_bridge.geometry import apply_delta, quat_to_rpy, rpy_to_quat
from robot_bridge.reach import Reach
from robot_bridge.robots.base import MissingExtraError, Robot, RobotError, anchor_pose
from robot_bridge.safety import SafetyConfig

log = logging.getLogger("robot_bridge.robots.xarm")

GRIPPER_STROKE_M = 0.085  # xArm Gripper: 0..85 mm opening over SDK positions 0..850


@dataclass(frozen=True)
class XArmConfig:
    host: str = "192.168.1.185"
    max_lead_m: float = 0.03  # the target never runs further than this ahead of the measured position
    max_lead_rad: float = 0.02  # nor turns further than this ahead of the measured orientation (docs/ROBOTS.md)
    gripper: bool = True
    gripper_open: float = 850.0  # SDK gripper position when open
    gripper_closed: float = 0.0
    gripper_speed: float = 5000.0  # r/min
    gripper_deadband: float = 20.0  # SDK units: smaller changes are not sent (the gripper is slow)

    def __post_init__(self):
        if self.gripper_open == self.gripper_closed:
            raise ValueError("gripper_open and gripper_closed must differ")
        if not (self.max_lead_m > 0 and self.max_lead_rad > 0):
            raise ValueError(f"max_lead_m / max_lead_rad: expected > 0, got {self.max_lead_m}, {self.max_lead_rad}")


def _import_sdk():
    try:
        from xarm.wrapper import XArmAPI
    except ImportError as e:
        raise MissingExtraError("xarm", "xarm", "xarm") from e
    return XArmAPI


class XArmRobot(Robot):
    name = "xarm"
    config_class = XArmConfig

    def __init__(self, config: XArmConfig | None = None, cameras: dict | None = None,
                 safety: SafetyConfig | None = None, api_class=None, action_spec=None):
        """api_class: XArmAPI or a stand-in with the same methods (default: xarm-python-sdk's)."""
        self.config = config or XArmConfig()
        self.api_class = api_class or _import_sdk()
        super().__init__(cameras=cameras, safety=safety, action_spec=action_spec)  # eef_delta or eef_absolute
        self.arm = None
        self._target: tuple[np.ndarray, np.ndarray] | None = None
        self._anchor = None
        self._grip_sent: float | None = None
        self.lead_capped = 0

    # xArm 6/7: 0.7 m reach from the shoulder (0.267 m above the base); flange + gripper ~0.17 m
    reach = Reach(shoulder=(0.0, 0.0, 0.267), reach_m=0.7, wrist_offset_m=0.17)

    @classmethod
    def default_safety(cls) -> SafetyConfig:
        # within the xArm's reach (docs/ROBOTS.md)
        return SafetyConfig(workspace_low=(0.20, -0.30, 0.05), workspace_high=(0.45, 0.30, 0.35),
                            max_step_translation_m=0.01, max_step_rotation_rad=0.03)

    def _check(self, code, what: str) -> None:
        if code not in (0, None):
            raise RobotError(f"xarm: {what} returned code {code} (see the SDK's API code table)")

    # ----- lifecycle -----
    def _connect(self) -> None:
        try:
            self.arm = self.api_class(self.config.host, is_radian=True)
        except Exception as e:  # noqa: BLE001
            raise RobotError(f"xarm at {self.config.host}: could not connect ({type(e).__name__}: {e})") from e
        self._enable()
        if self.config.gripper:
            self._check(self.arm.set_gripper_mode(0), "set_gripper_mode")
            self._check(self.arm.set_gripper_enable(True), "set_gripper_enable")

    def _enable(self) -> None:
        a = self.arm
        a.clean_error()
        a.clean_warn()
        self._check(a.motion_enable(enable=True), "motion_enable")
        self._check(a.set_mode(1), "set_mode(1) (servo motion mode)")
        self._check(a.set_state(0), "set_state(0)")

    def _disconnect(self) -> None:
        try:
            self._hold()
        finally:
            self.arm.disconnect()
            self.arm = None

    # ----- state -----
    def _pose(self) -> tuple[np.ndarray, np.ndarray]:
        code, p = self.arm.get_position(is_radian=True)  # [x, y, z] mm, [roll, pitch, yaw] rad
        self._check(code, "get_position")
        p = np.asarray(p, np.float64)
        return p[:3] / 1000.0, rpy_to_quat(p[3:6])

    def get_state(self) -> np.ndarray:
        if self.arm is None:
            raise RobotError("xarm: not connected")
        if getattr(self.arm, "has_err_warn", False) and getattr(self.arm, "error_code", 0):
            raise RobotError(f"xarm: controller error code {self.arm.error_code}")
        pos, quat = self._pose()
        w = self._gripper_width() if self.config.gripper else 0.0
        return np.concatenate([pos, quat, [w / 2, -w / 2]]).astype(np.float32)

    def _gripper_width(self) -> float:
        code, g = self.arm.get_gripper_position()
        self._check(code, "get_gripper_position")
        c = self.config
        frac = (float(g) - c.gripper_closed) / (c.gripper_open - c.gripper_closed)
        return float(np.clip(frac, 0.0, 1.0) * GRIPPER_STROKE_M)

    def reference_pose(self) -> tuple[np.ndarray, np.ndarray]:
        pos, quat = self._pose()
        self._anchor, capped = anchor_pose(self._target, pos, quat, self.config.max_lead_m,
                                           self.config.max_lead_rad)
        self.lead_capped += capped
        return self._anchor

    def status(self) -> dict:
        return {"lead_capped": self.lead_capped}

    # ----- actions -----
    def _servo(self, pos: np.ndarray, quat: np.ndarray) -> None:
        mvpose = [*(pos * 1000.0).tolist(), *quat_to_rpy(quat).tolist()]
        self._check(self.arm.set_servo_cartesian(mvpose, is_radian=True), "set_servo_cartesian")

    def _apply(self, action: np.ndarray) -> None:
        spec = self.exec_spec
        anchor = self._anchor or self.reference_pose()
        self._anchor = None
        pos, quat = apply_delta(anchor[0], anchor[1], action[0:3] * spec.pos_scale_m, action[3:6] * spec.rot_scale_rad)
        self._servo(pos, quat)
        self._target = (pos, quat)
        if self.config.gripper:
            c = self.config
            g = float(action[spec.gripper_index])
            target = c.gripper_open + (g + 1.0) / 2.0 * (c.gripper_closed - c.gripper_open)
            if self._grip_sent is None or abs(target - self._grip_sent) >= c.gripper_deadband:
                self._check(self.arm.set_gripper_position(target, wait=False, speed=c.gripper_speed),
                            "set_gripper_position")
                self._grip_sent = target

    def _hold(self) -> None:
        self._target = None
        if self.arm is not None:
            pos, quat = self._pose()
            self._servo(pos, quat)

    def _stop(self) -> None:
        self._target = None
        self._check(self.arm.set_state(4), "set_state(4) (stop)")

    def _release(self) -> None:
        if self.arm is not None:
            self._enable()
