"""UR (ur-rtde) and xArm (xarm-python-sdk) adapters against fake SDK objects that record calls: no controller or
simulator of either runs here, so this checks the command translation only (units, frames, rates, gripper
mapping, hold and stop calls). Both adapters are untested on hardware (README, docs/ROBOTS.md)."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from robot_bridge.geometry import quat_to_axis_angle
from robot_bridge.robots.base import MissingExtraError, RobotError, RobotStopped, anchor_pose
from robot_bridge.robots.ur import URConfig, URRobot
from robot_bridge.robots.xarm import XArmConfig, XArmRobot
from robot_bridge.safety import SafetyConfig

DOWN = Rotation.from_euler("x", math.pi)  # tool pointing down


class Recorder:
    def __init__(self, log, name):
        self._log, self._name = log, name

    def __getattr__(self, item):
        def call(*args, **kw):
            self._log.append((f"{self._name}.{item}", args, kw))
            return True  # ur-rtde's commands return True when accepted
        return call


class FakeUR:
    """ur-rtde's three interfaces; the measured TCP pose is whatever the test sets."""

    def __init__(self):
        self.calls: list = []
        self.pose = [0.4, -0.3, 0.2, *DOWN.as_rotvec()]
        self.protective = False
        fake = self

        class Ctrl(Recorder):
            def __init__(self, host, freq):
                super().__init__(fake.calls, "ctrl")
                fake.calls.append(("RTDEControlInterface", (host, freq), {}))

        class Recv:
            def __init__(self, host, freq):
                fake.calls.append(("RTDEReceiveInterface", (host, freq), {}))

            def getActualTCPPose(self):
                return list(fake.pose)

            def isProtectiveStopped(self):
                return fake.protective

            def isEmergencyStopped(self):
                return False

            def disconnect(self):
                pass

        class IO(Recorder):
            def __init__(self, host):
                super().__init__(fake.calls, "io")

        self.RTDEControlInterface, self.RTDEReceiveInterface, self.RTDEIOInterface = Ctrl, Recv, IO

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


def _act(*vals):
    a = np.zeros(7, np.float32)
    a[: len(vals)] = vals
    return a


def _roomy():
    return SafetyConfig(max_step_translation_m=0.1, max_step_rotation_rad=1.0)


def test_ur_servol_units_frames_and_rates():
    sdk = FakeUR()
    ur = URRobot(URConfig(host="10.0.0.5", rtde_frequency_hz=500, control_period_s=0.05, lookahead_time=0.1,
                          gain=300), safety=_roomy(), sdk=sdk).connect()
    assert sdk.calls[0] == ("RTDEControlInterface", ("10.0.0.5", 500), {})
    applied = ur.send_action(_act(0.2, 0, -0.1, 0, 0, 0.1))  # +1 cm x, -0.5 cm z, +0.05 rad about base z
    np.testing.assert_allclose(applied[:6], [0.2, 0, -0.1, 0, 0, 0.1], atol=1e-6)
    (_, args, _), = sdk.named("ctrl.servoL")
    pose, speed, acc, t, lookahead, gain = args
    np.testing.assert_allclose(pose[:3], [0.41, -0.3, 0.195], atol=1e-9)  # metres, base frame
    want = Rotation.from_rotvec([0, 0, 0.05]) * DOWN  # delta rotation applied in the base frame (left)
    assert (Rotation.from_rotvec(pose[3:]) * want.inv()).magnitude() < 1e-9  # a rotation vector, as URScript
    assert (t, lookahead, gain) == (0.05, 0.1, 300) and speed == acc == 0.0
    ur.send_action(_act(0.2))  # the arm has not moved (fake): the next target starts from the previous one
    np.testing.assert_allclose(sdk.named("ctrl.servoL")[-1][1][0][:3], [0.42, -0.3, 0.195], atol=1e-9)
    for _ in range(5):
        ur.send_action(_act(0.2))
    x = sdk.named("ctrl.servoL")[-1][1][0][0]
    assert x <= 0.4 + 0.03 + 0.01 + 1e-9 and ur.lead_capped >= 3  # never more than max_lead ahead of the arm
    st = ur.get_state()
    np.testing.assert_allclose(st[:3], [0.4, -0.3, 0.2], atol=1e-6)
    assert (Rotation.from_quat(st[3:7]) * DOWN.inv()).magnitude() < 1e-6  # quaternion xyzw


def test_ur_speedl_hold_stop_and_gripper():
    sdk = FakeUR()
    ur = URRobot(URConfig(mode="speedL", control_period_s=0.05, acceleration=0.5, gripper_digital_out=3,
                          stop_deceleration=2.0, estop_deceleration=10.0), safety=_roomy(), sdk=sdk).connect()
    ur.send_action(_act(0.2, 0, 0, 0, 0.1, 0, 1.0))
    (_, (xd, acc, t), _), = sdk.named("ctrl.speedL")
    np.testing.assert_allclose(xd, [0.2, 0, 0, 0, 1.0, 0], atol=1e-6)  # 1 cm / 50 ms = 0.2 m/s; 0.05 rad -> 1 rad/s
    assert acc == 0.5 and t == 0.0
    assert sdk.named("io.setStandardDigitalOut") == [("io.setStandardDigitalOut", (3, True), {})]
    ur.send_action(_act(0, 0, 0, 0, 0, 0, 0.2))  # inside the hysteresis band: no change
    ur.send_action(_act(0, 0, 0, 0, 0, 0, 0.9))  # still closed: not sent again
    ur.send_action(_act(0, 0, 0, 0, 0, 0, -0.8))
    assert [c[1] for c in sdk.named("io.setStandardDigitalOut")] == [(3, True), (3, False)]
    assert ur.get_state()[7] == pytest.approx(0.04)  # open: fingers at +w/2
    ur.hold()
    assert sdk.named("ctrl.speedStop")[-1][1] == (2.0,)
    ur.stop()
    assert sdk.named("ctrl.speedStop")[-1][1] == (10.0,)
    with pytest.raises(RobotStopped):
        ur.send_action(_act(0.1))
    ur.release()
    ur.send_action(_act(0.1))
    assert len(sdk.named("ctrl.speedL")) == 5
    sdk.protective = True
    with pytest.raises(RobotError, match="protective"):
        ur.get_state()
    ur.disconnect()
    assert sdk.named("ctrl.stopScript")


def test_ur_servol_hold_and_default_safety_clip():
    sdk = FakeUR()
    sdk.pose[0] = 0.3  # inside the default box
    ur = URRobot(URConfig(), sdk=sdk).connect()  # default safety: 1 cm per step
    ur.send_action(_act(1.0))  # 5 cm asked
    np.testing.assert_allclose(sdk.named("ctrl.servoL")[-1][1][0][0], 0.31, atol=1e-9)
    assert ur.safety.counts["max_translation"] == 1
    ur.hold()
    assert sdk.named("ctrl.servoStop")[-1][1] == (2.0,)


class FakeXArm:
    def __init__(self, host, is_radian=False):
        self.host, self.is_radian = host, is_radian
        self.calls: list = []
        self.pos = [300.0, 0.0, 200.0, math.pi, 0.0, 0.0]  # mm and rad
        self.gripper = 850.0
        self.code = 0
        self.has_err_warn, self.error_code = False, 0  # properties of XArmAPI

    def _rec(self, name, *args, **kw):
        self.calls.append((name, args, kw))
        return self.code

    def __getattr__(self, name):
        return lambda *a, **k: self._rec(name, *a, **k)

    def get_position(self, is_radian=None):
        self.calls.append(("get_position", (), {"is_radian": is_radian}))
        return 0, list(self.pos)

    def get_gripper_position(self):
        return 0, self.gripper

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


def test_xarm_servo_cartesian_units_and_gripper():
    made = []

    def api(host, is_radian=False):
        made.append(FakeXArm(host, is_radian))
        return made[-1]

    x = XArmRobot(XArmConfig(host="10.0.0.7"), safety=_roomy(), api_class=api).connect()
    arm = made[0]
    assert arm.host == "10.0.0.7" and arm.is_radian
    assert [c[0] for c in arm.calls[:7]] == ["clean_error", "clean_warn", "motion_enable", "set_mode", "set_state",
                                             "set_gripper_mode", "set_gripper_enable"]
    assert arm.named("set_mode")[0][1] == (1,) and arm.named("set_state")[0][1] == (0,)  # servo mode, motion state
    x.send_action(_act(0.2, -0.2, 0.0, 0.0, 0.0, 0.1, 1.0))
    (_, (mvpose,), kw), = arm.named("set_servo_cartesian")
    np.testing.assert_allclose(mvpose[:3], [310.0, -10.0, 200.0], atol=1e-6)  # millimetres
    assert kw == {"is_radian": True}
    start = Rotation.from_euler("xyz", [math.pi, 0, 0])  # fixed-axis roll, pitch, yaw
    want = Rotation.from_rotvec([0, 0, 0.05]) * start
    assert (Rotation.from_euler("xyz", mvpose[3:]) * want.inv()).magnitude() < 1e-9
    assert arm.named("set_gripper_position")[-1][1] == (0.0,)  # +1: closed (SDK 0)
    x.send_action(_act(0, 0, 0, 0, 0, 0, 0.99))  # a change under the deadband: not sent
    x.send_action(_act(0, 0, 0, 0, 0, 0, 0.0))  # half open: 425
    assert [c[1][0] for c in arm.named("set_gripper_position")] == [0.0, 425.0]
    assert arm.named("set_gripper_position")[-1][2]["wait"] is False
    st = x.get_state()
    np.testing.assert_allclose(st[:3], [0.3, 0.0, 0.2], atol=1e-6)
    assert st[7] == pytest.approx(0.0425) and st[8] == pytest.approx(-0.0425)  # 850 = 85 mm open


def test_xarm_hold_stop_release_and_errors():
    arm = FakeXArm("h")
    x = XArmRobot(XArmConfig(gripper=False), safety=_roomy(), api_class=lambda host, is_radian: arm).connect()
    x.send_action(_act(0.2))
    x.hold()  # the measured pose becomes the servo target
    mv = arm.named("set_servo_cartesian")[-1][1][0]
    np.testing.assert_allclose(mv[:3], arm.pos[:3], atol=1e-6)
    x.stop()
    assert arm.named("set_state")[-1][1] == (4,)
    with pytest.raises(RobotStopped):
        x.send_action(_act(0.2))
    n_mode = len(arm.named("set_mode"))
    x.release()
    assert len(arm.named("set_mode")) == n_mode + 1 and arm.named("set_state")[-1][1] == (0,)
    arm.code = 9
    with pytest.raises(RobotError, match="code 9"):
        x.send_action(_act(0.2))


@pytest.mark.parametrize("robot,module,extra", [("ur", "rtde_control", "ur"), ("xarm", "xarm.wrapper", "xarm"),
                                                ("franka", "franky", "franka")])
def test_missing_sdk_names_the_extra(monkeypatch, robot, module, extra):
    from robot_bridge.robots import robot_class

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == module or name.startswith(module.split(".")[0] + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    cls, cfg = robot_class(robot)
    with pytest.raises(MissingExtraError, match=rf"pip install 'vla-stack\[{extra}\]'"):
        cls(cfg())


def test_unknown_robot_suggests_the_closest():
    from robot_bridge.robots import robot_class

    with pytest.raises(ValueError, match="did you mean 'franka'"):
        robot_class("frank")


def _entry_points(monkeypatch, eps):
    """Replace the installed entry-point metadata of robot_bridge.robots with `eps` (name -> "module:Class")."""
    from importlib.metadata import EntryPoint

    import robot_bridge.robots as robots

    monkeypatch.setattr(robots, "entry_points", lambda group: [EntryPoint(n, v, group) for n, v in eps.items()])


def test_arms_register_through_entry_points(monkeypatch):
    """A plugin's arm is found by its entry point; the built-ins resolve with no metadata at all (a stale install);
    `sim` unregistered (the robot-side distribution) names what to install."""
    from robot_bridge.robots import robot_class

    _entry_points(monkeypatch, {"fake_ur": "robot_bridge.robots.ur:URRobot"})
    assert robot_class("fake_ur") == (URRobot, URConfig)
    _entry_points(monkeypatch, {})
    assert robot_class("xarm") == (XArmRobot, XArmConfig)
    with pytest.raises(MissingExtraError, match=r"robot 'sim' needs the Python module 'sim.robot': "
                                                r"pip install 'vla-stack\[sim\]'"):
        robot_class("sim")
    _entry_points(monkeypatch, {"broken": "robot_bridge.robots.base:ActionSpec"})
    with pytest.raises(TypeError, match="config_class"):
        robot_class("broken")


def test_installed_metadata_registers_every_arm():
    """The full install's packaging (pyproject.toml) declares all four arms; `pip install -e .` writes them."""
    from importlib.metadata import entry_points

    from robot_bridge.robots import GROUP, robot_class

    assert {"sim", "franka", "ur", "xarm"} <= {ep.name for ep in entry_points(group=GROUP)}
    cls, cfg = robot_class("sim")
    assert cls.name == "sim" and cfg.__name__ == "SimConfig"


def test_quat_axis_angle_round_trip():
    rng = np.random.default_rng(1)
    for v in rng.normal(size=(20, 3)):
        q = Rotation.from_rotvec(v).as_quat()
        assert (Rotation.from_rotvec(quat_to_axis_angle(q)) * Rotation.from_rotvec(v).inv()).magnitude() < 1e-9


def test_orientation_lead_is_bounded_like_the_position_lead():
    """A blocked arm (the fake never moves) turned by rotation commands: the commanded orientation never runs more
    than max_lead_rad (+ one step) ahead of the measured one, so the arm cannot keep turning after commands stop."""
    sdk = FakeUR()
    ur = URRobot(URConfig(max_lead_rad=0.02), safety=_roomy(), sdk=sdk).connect()
    for _ in range(20):
        ur.send_action(_act(0, 0, 0, 0, 0, 0.1))  # 0.05 rad about base z each
    pose = sdk.named("ctrl.servoL")[-1][1][0]
    lead = (Rotation.from_rotvec(pose[3:]) * DOWN.inv()).magnitude()
    assert lead == pytest.approx(0.02 + 0.05, abs=1e-6)  # the anchor capped at 0.02 rad, plus this step's 0.05
    assert ur.lead_capped >= 18


def test_anchor_pose_caps_position_and_orientation_separately():
    from robot_bridge.geometry import axis_angle_to_quat, quat_mul, quat_to_axis_angle

    q = np.array([1.0, 0.0, 0.0, 0.0])
    target = (np.array([0.5, 0.0, 0.3]), quat_mul(axis_angle_to_quat([0, 0, 0.5]), q))
    (p, tq), capped = anchor_pose(target, np.array([0.5, 0.0, 0.3]), q, 0.03, 0.05)
    assert capped and np.allclose(p, target[0])
    rel = quat_to_axis_angle(quat_mul(tq, np.array([-q[0], -q[1], -q[2], q[3]])))
    np.testing.assert_allclose(rel, [0, 0, 0.05], atol=1e-9)  # same axis, cut to the bound
    (p, tq), capped = anchor_pose(target, np.array([0.5, 0.0, 0.3]), target[1], 0.03, 0.05)
    assert not capped and np.allclose(tq, target[1])


@pytest.mark.parametrize("cls", [URRobot, XArmRobot])
def test_default_workspaces_are_reachable_and_a_far_box_is_refused(cls):
    from robot_bridge.reach import check_workspace

    cfg = cls.default_safety()
    check_workspace(cls.name, cls.reach, cfg.workspace_low, cfg.workspace_high)  # raises if not
    with pytest.raises(ValueError, match=r"workspace for .*corner .*beyond"):
        check_workspace(cls.name, cls.reach, (0.2, -0.45, 0.05), (0.8, 0.45, 0.8))
    with pytest.raises(ValueError, match="vertical axis"):
        check_workspace(cls.name, cls.reach, (-0.1, -0.1, 0.05), (0.1, 0.1, 0.2))


def test_a_configured_unreachable_box_fails_at_construction_unless_the_check_is_skipped():
    far = dict(workspace_low=(-0.6, -0.7, 0.02), workspace_high=(0.6, -0.15, 0.7))  # the old UR default
    with pytest.raises(ValueError, match=r"workspace for ur: .*not safely reachable"):
        URRobot(URConfig(), safety=SafetyConfig(**far), sdk=FakeUR())
    URRobot(URConfig(), safety=SafetyConfig(**far, check_reach=False), sdk=FakeUR())


def test_quat_to_rpy_round_trips_at_gimbal_lock():
    """xArm takes roll/pitch/yaw: at pitch exactly +-pi/2 only yaw -+ roll is defined; the conversion must still give
    back the same rotation (it lost up to pi rad there)."""
    from robot_bridge.geometry import quat_angle, quat_to_rpy, rpy_to_quat

    for pitch in (math.pi / 2, -math.pi / 2, math.pi / 2 - 1e-9):
        for roll, yaw in ((0.3, 0.1), (-1.0, 2.0), (2.5, -2.9), (0.0, 0.0)):
            q = Rotation.from_euler("xyz", [roll, pitch, yaw]).as_quat()  # fixed-axis XYZ, as the xArm
            rpy = quat_to_rpy(q)
            assert abs(rpy[1]) <= math.pi / 2 + 1e-12
            assert quat_angle(q, rpy_to_quat(rpy)) < 1e-6, (roll, pitch, yaw, rpy)
    for q in Rotation.random(200, random_state=1).as_quat():
        assert quat_angle(q, rpy_to_quat(quat_to_rpy(q))) < 1e-6  # (arccos near 1 resolves ~3e-8 rad)


def test_ur_estop_falls_back_to_a_protective_stop_when_the_stop_call_raises():
    """ur-rtde raises RuntimeError from speedStop: the e-stop triggers the controller's protective stop and says
    so (the robot server latches the e-stop and reports the failure)."""
    sdk = FakeUR()
    ur = URRobot(URConfig(mode="speedL"), safety=_roomy(), sdk=sdk).connect()

    def broken(*a):
        raise RuntimeError("speedStop: RTDE control script is not running")

    ur.ctrl.speedStop = broken
    with pytest.raises(RobotError, match="protective stop triggered"):
        ur.stop()
    assert sdk.named("ctrl.triggerProtectiveStop") and ur.stopped
