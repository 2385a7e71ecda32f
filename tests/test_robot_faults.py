"""The robot server never dies quietly: an adapter exception on any path, a NaN measurement, a leaking release
allowance, an unbounded joint-mode step, a velocity-mode overshoot or a read-only client asking to command all end in
a stopped arm, a latched fault or a refusal.

The UR adapter runs against FaultyUR (tests/robot_helpers.py), a stand-in for ur-rtde whose arm moves as commanded
and whose methods raise on demand: no UR simulator runs here. Franka checks that need the arm itself run on
franky-sim in tests/test_robot_franka.py; the ones here use the adapter's kinematics and limits only."""

from __future__ import annotations

import time

import numpy as np
import pytest
from robot_helpers import FaultyUR

from robot_bridge import robot_protocol as RP
from robot_bridge.protocol import ServerError
from robot_bridge.robot_client import RobotClient
from robot_bridge.robot_server import RobotServer
from robot_bridge.robots.base import ActionSpec
from robot_bridge.robots.ur import URConfig, URRobot
from robot_bridge.safety import SafetyConfig, SafetyFault, SafetyFilter, UnsafeAction

WATCHDOG_MS = 100.0
BOX_LO, BOX_HI = np.array([-0.35, -0.55, 0.05]), np.array([0.35, -0.20, 0.35])  # URRobot.default_safety()


def _act(*vals) -> np.ndarray:
    a = np.zeros(7, np.float32)
    a[: len(vals)] = vals
    return a


class URRig:
    """A robot server on the UR adapter over FaultyUR, two clients (the second only watches)."""

    def __init__(self, mode="servoL", action_spec=None, pose=None, client_kw=None, other_kw=None, **server_kw):
        self.fake = FaultyUR() if pose is None else FaultyUR(pose)
        self.robot = URRobot(URConfig(mode=mode), sdk=self.fake, action_spec=action_spec)
        self.server = RobotServer(self.robot, bind="tcp://127.0.0.1:0", watchdog_ms=WATCHDOG_MS, rate_hz=50,
                                  **server_kw).start()
        self.client = RobotClient(self.server.address, timeout_ms=3000, **(client_kw or {}))
        self.client.hello()
        self.other = RobotClient(self.server.address, timeout_ms=3000, **(other_kw or {}))
        self.other.hello()

    def close(self):
        for c in (self.client, self.other):
            c.close()
        self.server.stop()


@pytest.fixture
def ur_rig():
    rigs = []

    def make(**kw):
        rigs.append(URRig(**kw))
        return rigs[-1]

    yield make
    for r in rigs:
        r.close()


def _stopped_after(fake: FaultyUR, t: float) -> bool:
    """The stand-in saw a stop (speedStop/servoStop at the e-stop deceleration, or a protective stop) after t."""
    return any(c[2] >= t and (c[0] == "triggerProtectiveStop" or (c[0] in ("speedStop", "servoStop")
                                                                  and c[1] == (10.0,))) for c in fake.calls)


@pytest.mark.parametrize("path", ["apply", "estop", "get_state", "hold", "reset"])
def test_a_runtime_error_on_any_path_stops_the_arm_latches_a_fault_and_the_server_keeps_serving(ur_rig, path):
    """ur-rtde raises RuntimeError (not RobotError). On each path the arm is stopped (the stand-in's velocity is
    zero), the fault is latched with the exception's text and counted, a second client sees it (status and state
    publication), and the server still answers state and e-stop; the control thread is alive, never restarted."""
    rig = ur_rig(mode="speedL")
    fake, c = rig.fake, rig.client
    err = RuntimeError(f"RTDE: injected failure on the {path} path")
    assert c.command(_act(0.1))["kind"] == "applied"  # moving at 0.1 m/s
    t0 = time.monotonic()
    if path == "apply":
        fake.fail["speedL"] = err
        r = c.command(_act(0.1))
        assert r["kind"] == "dropped" and r["reason"] == "fault"
    elif path == "estop":
        fake.fail["speedStop"] = err
        r = c.estop("operator")
        assert r["status"]["mode"] == "estopped" and "RuntimeError" in r["stop_failed"]
        assert rig.robot.stopped
    elif path == "get_state":
        fake.fail["getActualTCPPose"] = err
    elif path == "hold":
        fake.fail["speedStop"] = err  # the watchdog's hold (speedStop) raises 100 ms after the last command
    else:
        fake.fail["speedStop"] = err
        with pytest.raises(ServerError) as e:
            c.reset()
        assert e.value.code == RP.RobotErrorCode.ROBOT_FAULT and "RuntimeError" in str(e.value)
    want = "estopped" if path == "estop" else "fault"
    st = rig.other.wait_state(lambda s: s["mode"] == want, 3.0)  # the second client sees it
    assert st is not None, f"no {want} published after a RuntimeError on {path}"
    status = rig.other.status()
    assert status["status"]["mode"] == want and status["last_fault"]["path"] == path
    assert "RuntimeError" in status["last_fault"]["error"] and "injected" in status["last_fault"]["error"]
    if path != "estop":
        assert status["status"]["fault"].startswith(f"{path}: RuntimeError")
        assert status["counters"]["faults"] == 1
    assert status["counters"][f"adapter_exceptions:{path}"] >= 1
    assert _stopped_after(fake, t0), fake.calls[-6:]
    p0 = fake.position()
    time.sleep(0.2)
    assert np.linalg.norm(fake.position() - p0) < 1e-9  # the arm does not move
    r = c.command(_act(0.1))
    assert r["kind"] == "dropped" and r["reason"] in ("fault", "estopped")
    assert c.estop("still there")["status"]["mode"] == "estopped"  # e-stop answered
    assert rig.other.wait_state(lambda s: s["mode"] == "estopped", 2.0) is not None  # state still published
    assert rig.server.alive and rig.server.counts["control_loop_restarts"] == 0


def test_the_control_loop_supervisor_restarts_the_loop_and_faults_the_arm(ur_rig, monkeypatch):
    """An exception that escapes every handler (here: injected into the watchdog check) does not kill the control
    thread: the supervisor counts it, faults the arm and runs the loop again."""
    rig = ur_rig(mode="speedL")
    assert rig.client.command(_act(0.1))["kind"] == "applied"
    calls = {"n": 0}
    orig = rig.server._check_watchdog

    def broken():
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("a bug in the loop")
        orig()

    t0 = time.monotonic()
    monkeypatch.setattr(rig.server, "_check_watchdog", broken)
    st = rig.other.wait_state(lambda s: s["mode"] == "fault", 3.0)
    assert st is not None and "control loop: KeyError" in st["fault"]
    assert rig.server.alive and rig.server.counts["control_loop_restarts"] == 1
    assert _stopped_after(rig.fake, t0)
    assert rig.client.hello()["robot"] == "ur"  # still serving
    assert rig.client.release()["status"]["mode"] == "idle"
    assert rig.client.command(_act(0.1))["kind"] == "applied"


def test_an_estop_whose_stop_call_raised_is_still_latched(ur_rig):
    rig = ur_rig(mode="servoL")
    rig.fake.fail["servoStop"] = RuntimeError("servoStop: RTDE control script not running")
    rig.fake.fail["triggerProtectiveStop"] = RuntimeError("not connected")
    r = rig.client.estop("operator")
    assert r["status"]["mode"] == "estopped" and "servoStop" in r["stop_failed"]
    r = rig.client.command(_act(0.1))
    assert r["kind"] == "dropped" and r["reason"] == "estopped"
    assert not rig.fake.named("servoL")  # nothing reached the arm
    st = rig.other.status()
    assert st["counters"]["estop_stop_failed"] == 1 and st["last_fault"]["path"] == "estop"


@pytest.mark.parametrize("what", ["nan_pose", "inf_position", "drift_far"])
def test_a_non_finite_or_impossible_measurement_faults_within_one_tick(ur_rig, what):
    rig = ur_rig(mode="servoL")
    assert rig.client.command(_act(0.1))["kind"] == "applied"
    seq0 = rig.server._pub_seq
    if what == "nan_pose":
        rig.fake.nan = True
    elif what == "inf_position":
        rig.fake.drift = np.array([np.inf, 0.0, 0.0])
    else:
        rig.fake.drift = np.array([0.0, 0.0, 100.0])  # 100 m above the base: no arm is there
    st = rig.other.wait_state(lambda s: s["mode"] == "fault", 3.0)
    assert st is not None and "pose monitor" in st["fault"]
    assert st["pub_seq"] - seq0 <= 2  # the tick under way or the next one
    m = rig.other.status()["pose_monitor"]["last"]
    assert m["kind"] == "measurement"
    assert rig.server.counts["measurement_faults"] == 1
    r = rig.client.release()  # the measurement is still bad: released, then faulted again at the next tick
    assert r["kind"] == "release"
    assert rig.other.wait_state(lambda s: s["mode"] == "fault" and s["counters"]["measurement_faults"] == 2,
                                3.0) is not None


def test_measurement_checks_cover_pose_orientation_fingers_and_joints():
    franka = pytest.importorskip("robot_bridge.robots.franka")
    pytest.importorskip("franky")
    robot = franka.FrankaRobot(franka.FrankaConfig(host="127.0.0.1"))
    good = np.array([0.45, 0.0, 0.4, 1.0, 0.0, 0.0, 0.0, 0.04, -0.04], np.float32)
    robot._q = np.concatenate([np.asarray((0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785)), [0.04, 0.04]])
    assert robot.pose_violation(good) is None
    cases = {"nan position": (0, np.nan), "inf quaternion": (4, np.inf), "zero quaternion": (3, 0.0),
             "nan finger": (7, np.nan), "finger 1 m": (8, 1.0)}
    for name, (i, v) in cases.items():
        s = good.copy()
        s[i] = v
        if name == "zero quaternion":
            s[3:7] = 0.0
        vio = robot.pose_violation(s)
        assert vio is not None and vio["kind"] == "measurement", name
    robot._q[2] = np.nan
    vio = robot.pose_violation(good)
    assert vio is not None and vio["kind"] == "measurement" and "joints" in vio["detail"]


def test_the_safety_filter_refuses_a_non_finite_reference_and_its_outputs_are_always_finite():
    spec = ActionSpec()
    cfg = SafetyConfig(workspace_low=(0.3, -0.3, 0.05), workspace_high=(0.6, 0.3, 0.5))
    f = SafetyFilter(cfg, spec)
    for ref in ([np.nan, 0.0, 0.3], [0.5, np.inf, 0.3], [0.5, 0.0]):
        with pytest.raises(SafetyFault):
            f.filter(_act(0.0, 0.0, 1.0), ref)
    rng = np.random.default_rng(0)
    for _ in range(500):
        a = rng.normal(0, 10, 7) * rng.choice([1.0, 1e30], 7)
        ref = rng.uniform(-1, 1, 3) * rng.choice([1.0, 1e6])
        out = f.filter(a, ref)
        assert np.all(np.isfinite(out))
        assert np.linalg.norm(out[:3] * spec.pos_scale_m) <= cfg.max_step_translation_m * (1 + 1e-5)
        assert np.linalg.norm(out[3:6] * spec.rot_scale_rad) <= cfg.max_step_rotation_rad * (1 + 1e-5)
        f.verify(out, ref)  # the final check agrees
    jspec = ActionSpec.joint_absolute(3)
    jf = SafetyFilter(SafetyConfig(), jspec)
    limits = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    with pytest.raises(SafetyFault):
        jf.filter_joints(np.array([0.1, 0.1, 0.1, 0.0]), np.array([0.0, np.nan, 0.0]), limits)
    for _ in range(300):
        a = np.append(rng.normal(0, 5, 3), rng.normal())
        ref = rng.uniform(-1.2, 1.2, 3)
        out = jf.filter_joints(a, ref, limits)
        assert np.all(np.isfinite(out)) and np.max(np.abs(out[:3] - ref)) <= jspec.max_step_joint_rad + 1e-6


def test_the_final_check_refuses_whatever_produced_an_unsafe_action(ur_rig, monkeypatch):
    """A filter that lets a 5 cm step through (here: patched to pass the action on) is caught by the last check
    before _apply: nothing reaches the arm, the server faults."""
    rig = ur_rig(mode="servoL")
    monkeypatch.setattr(rig.robot.safety, "filter", lambda a, ref, travel=1.0: np.asarray(a, np.float32))
    r = rig.client.command(_act(0.0, 0.0, 1.0))
    assert r["kind"] == "dropped" and r["reason"] == "fault"
    st = rig.other.status()
    assert "final check" in st["status"]["fault"] and st["safety"]["final_check_failed"] == 1
    assert not rig.fake.named("servoL")


def test_the_release_allowance_is_per_axis_and_shrinks_as_the_arm_comes_back(ur_rig):
    """Released 5 cm outside in x: y going out by the same amount is a new fault (the allowance was per axis), and
    after walking 2 cm back in x, drifting out again by 1.5 cm is one too (the allowance shrank)."""
    rig = ur_rig(mode="servoL", pose=(0.30, -0.35, 0.2, np.pi, 0.0, 0.0))
    c, fake = rig.client, rig.fake
    fake.push([0.10, 0.0, 0.0])  # x 0.40: 5 cm outside (3 cm past the tolerance)
    assert rig.other.wait_state(lambda s: s["mode"] == "fault", 3.0) is not None
    assert c.release()["status"]["mode"] == "idle"
    time.sleep(0.1)
    assert rig.other.status()["status"]["mode"] == "idle"  # allowed: as far out as at the release
    fake.push([0.0, -0.25, 0.0])  # y -0.60: 5 cm outside too
    st = rig.other.wait_state(lambda s: s["mode"] == "fault", 3.0)
    assert st is not None and "along y" in st["fault"]
    fake.push([0.0, 0.25, 0.0])
    assert c.release()["status"]["mode"] == "idle"
    for _ in range(2):  # 2 cm back towards the box in x (the box rule pulls it in: 1 cm per command)
        assert c.command(_act(-0.2))["kind"] == "applied"
    time.sleep(0.1)
    assert rig.other.status()["status"]["mode"] in ("active", "holding")
    assert abs(fake.position()[0] - 0.38) < 1e-6
    fake.push([0.015, 0.0, 0.0])  # creeps out 1.5 cm again: still inside what was allowed at the release
    st = rig.other.wait_state(lambda s: s["mode"] == "fault", 3.0)
    assert st is not None and "along x" in st["fault"]


def test_fault_release_creep_through_the_server_never_ends_further_out(ur_rig):
    """Released 5 cm outside in x and 3 cm in z, then five rounds of commands pushing outward on every axis, each
    round ended by a pushed-out fault and a release: no axis ever ends further out than at the first release."""
    rig = ur_rig(mode="servoL", pose=(0.30, -0.35, 0.30, np.pi, 0.0, 0.0))
    c, fake = rig.client, rig.fake
    fake.push([0.10, 0.0, 0.08])  # x 0.40, z 0.38: outside
    assert rig.other.wait_state(lambda s: s["mode"] == "fault", 3.0) is not None
    assert c.release()["status"]["mode"] == "idle"
    start_out = np.maximum(np.maximum(BOX_LO - fake.position(), fake.position() - BOX_HI), 0.0)
    for _ in range(5):
        for _ in range(6):
            r = c.command(_act(1.0, -1.0, 1.0))  # +x, -y, +z: out of the box on every axis
            assert r["kind"] in ("applied", "dropped")
            out = np.maximum(np.maximum(BOX_LO - fake.position(), fake.position() - BOX_HI), 0.0)
            assert np.all(out <= start_out + 1e-9), (fake.position(), start_out)
        fake.push([0.0, -0.3, 0.0])  # an outside force takes y out: a fault ...
        assert rig.other.wait_state(lambda s: s["mode"] == "fault", 3.0) is not None
        fake.push([0.0, 0.3, 0.0])  # ... the arm is put back, released
        assert c.release()["status"]["mode"] == "idle"
    assert rig.server.counts["pose_faults"] >= 6


def test_a_joint_past_its_limit_faults_while_the_workspace_is_outside_the_box():
    """The joint check is not skipped while a workspace allowance is in force (franka limits and kinematics)."""
    pytest.importorskip("franky")
    from robot_bridge.robots.franka import FrankaConfig, FrankaRobot

    robot = FrankaRobot(FrankaConfig(host="127.0.0.1"))
    srv = RobotServer(robot, bind="tcp://127.0.0.1:0")  # not started: the monitor is called directly
    home = np.asarray((0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785))
    robot._q = np.concatenate([home, [0.04, 0.04]])
    out = np.array([0.65, 0.0, 0.4, 1.0, 0.0, 0.0, 0.0, 0.04, -0.04], np.float32)  # 5 cm past x 0.60
    ex = robot.pose_excess(out)
    srv._pose_allowance = {"workspace": np.maximum(ex["workspace"], 0.0)}
    srv._monitor_pose(out, time.monotonic())
    assert srv.mode == "idle"  # within the allowance
    robot._q[0] = 2.74  # joint 1 past its limit less the margin
    srv._monitor_pose(out, time.monotonic())
    assert srv.mode == "fault" and srv.pose_monitor["last"]["kind"] == "joint_limits"
    assert srv.pose_monitor["last"]["index"] == 0


def _franka_kin():
    pytest.importorskip("franky")
    from robot_bridge.robots.franka import FrankaRobot

    return FrankaRobot.forward_kinematics, FrankaRobot.joint_limits


def test_joint_modes_bound_the_end_effector_step_like_the_eef_modes():
    """Random joint configurations, every joint stepping by the full max_step_joint_rad: without kinematics the
    end effector moves up to ~2 cm a command; with them never more than max_step_translation_m / rotation_rad."""
    fk, limits = _franka_kin()
    spec = ActionSpec.joint_absolute(7)
    cfg = SafetyConfig()
    bounded, free = SafetyFilter(cfg, spec), SafetyFilter(cfg, spec)
    rng = np.random.default_rng(1)
    lo, hi = np.asarray(limits[0]) + 0.1, np.asarray(limits[1]) - 0.1
    worst_free = worst = 0.0
    for _ in range(300):
        q0 = rng.uniform(lo, hi)
        a = np.append(q0 + rng.choice([-1.0, 1.0], 7) * 0.05, 0.0)
        for f, use_fk in ((bounded, True), (free, False)):
            out = f.filter_joints(a, q0, limits, fk=fk if use_fk else None)
            p0, r0 = fk(q0)
            p1, r1 = fk(out[:7])
            t = float(np.linalg.norm(p1 - p0))
            if use_fk:
                worst = max(worst, t)
                f.verify(out, q0, joint_limits=limits, fk=fk)
            else:
                worst_free = max(worst_free, t)
    assert worst <= cfg.max_step_translation_m * (1 + 1e-3) < worst_free
    assert bounded.counts["max_ee_step"] > 0


def test_fault_release_creep_in_joint_space_cannot_walk_the_arm_out_of_the_box():
    """An arm released outside the box in x, then 300 joint commands biased outward (the arm follows each target):
    no axis of the end effector ever ends further out than at the release, no joint leaves its limits."""
    fk, limits = _franka_kin()
    spec = ActionSpec.joint_delta(7).executed()
    cfg = SafetyConfig(workspace_low=(0.30, -0.30, 0.05), workspace_high=(0.60, 0.30, 0.50))
    f = SafetyFilter(cfg, spec)
    lo, hi = np.asarray(cfg.workspace_low), np.asarray(cfg.workspace_high)
    q = np.asarray((0.0, 0.35, 0.0, -1.6, 0.0, 1.95, 0.785))  # the hand about 0.62 m out in x: outside
    p, _ = fk(q)
    start_out = np.maximum(np.maximum(lo - p, p - hi), 0.0)
    assert start_out[0] > 0.01, p
    rng = np.random.default_rng(2)
    for _ in range(300):
        push = rng.normal(0, 1, 7) + np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # joint 2 and 4 reach outward
        q = f.filter_joints(np.append(q + push * 0.05, 0.0), q, limits, fk=fk)[:7].astype(np.float64)
        p, _ = fk(q)
        out = np.maximum(lo - p, p - hi)
        assert np.all(out <= start_out + 1e-4), (p, start_out)
        assert np.all(q >= np.asarray(limits[0])) and np.all(q <= np.asarray(limits[1]))
    assert f.counts["workspace"] > 0


def test_speedl_clips_the_box_against_the_travel_until_the_watchdog_stops_it(ur_rig):
    """speedL keeps its last velocity until the watchdog holds the arm: streaming full-speed +x towards the box
    face and then stopping must not carry the arm past it. With a one-period clip (travel 1) it does."""
    ends = {}
    for name in ("watchdog travel", "one period"):
        rig = ur_rig(mode="speedL", pose=(0.335, -0.35, 0.2, np.pi, 0.0, 0.0))
        if name == "one period":
            rig.robot.travel = lambda: 1.0
        assert rig.robot.travel() > 2.0 or name == "one period"
        assert rig.client.command(_act(1.0))["kind"] == "applied"  # 1.5 cm from the face, full speed, then nothing
        assert rig.other.wait_state(lambda s: s["mode"] == "holding", 3.0) is not None
        ends[name] = rig.fake.position()[0]
        rig.close()
    assert ends["watchdog travel"] <= BOX_HI[0] + 1e-3, ends
    assert ends["one period"] > BOX_HI[0] + 3e-3, ends  # the overshoot the clip prevents


def test_a_huge_eef_absolute_rotation_vector_is_an_unsafe_action_and_counted(ur_rig):
    rig = ur_rig(mode="servoL", action_spec=ActionSpec.eef_absolute())
    with pytest.raises(ServerError) as e:
        rig.client.command(np.array([0.0, -0.35, 0.2, 1e30, 0.0, 0.0, 0.0]))  # finite in float32
    assert e.value.code == RP.RobotErrorCode.UNSAFE_ACTION and "rotation vector" in str(e.value)
    st = rig.other.status()
    assert st["counters"]["rejected_unsafe"] == 1 and st["safety"]["rejected"] == 1 and st["status"]["mode"] == "idle"
    assert not rig.fake.named("servoL")


def test_action_spec_refuses_a_nan_or_negative_joint_step():
    for bad in (float("nan"), -0.01, 0.0, float("inf")):
        with pytest.raises(ValueError, match="max_step_joint_rad"):
            ActionSpec.joint_absolute(7, max_step_joint_rad=bad)


# ----- observer keys -----
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from robot_bridge.security import generate_keypair

    d = tmp_path_factory.mktemp("keys")
    return {"server": generate_keypair(str(d / "server"), "server"),
            "commander": generate_keypair(str(d / "commanders"), "workstation"),
            "observer": generate_keypair(str(d / "observers"), "dashboard")}


def test_an_observer_key_reads_state_and_is_refused_command_release_and_reset(ur_rig, keys):
    rig = ur_rig(mode="servoL", server_secret_key=keys["server"][1],
                 authorized_keys=keys["commander"][0].rsplit("/", 1)[0],
                 observer_keys=keys["observer"][0].rsplit("/", 1)[0],
                 client_kw=dict(client_secret_key=keys["commander"][1], server_public_key=keys["server"][0]),
                 other_kw=dict(client_secret_key=keys["observer"][1], server_public_key=keys["server"][0]))
    obs = rig.other
    assert obs.hello()["secure"] is True and rig.client.hello()["robot"] == "ur"
    assert obs.status()["status"]["mode"] == "idle"
    assert obs.observe()["state"].shape == (9,)
    assert obs.wait_state(lambda s: s["state"] is not None, 2.0) is not None  # the encrypted state publication
    for call in (lambda: obs.command(_act(0.1)), obs.release, obs.reset):
        with pytest.raises(ServerError) as e:
            call()
        assert e.value.code == RP.RobotErrorCode.UNAUTHORIZED
    assert not rig.fake.named("servoL") and rig.server.counts["error:unauthorized"] == 3
    assert rig.client.command(_act(0.1))["kind"] == "applied"  # the commander's key commands
    assert obs.estop("dashboard")["status"]["mode"] == "estopped"  # an observer may stop the arm
    with pytest.raises(ServerError):
        obs.release()
    assert rig.client.release()["status"]["mode"] == "idle"


def test_observer_keys_need_server_keys():
    from robot_bridge.robot_server import RobotServerConfig

    with pytest.raises(ValueError, match="observer"):
        RobotServerConfig(observer_keys="observers/")


def test_an_unsafe_action_reply_is_counted_and_a_wrong_shape_is_bad_field(ur_rig):
    """What docs/ROBOTS.md says: NaN is `unsafe_action` (counted rejected_unsafe), a wrong shape `bad_field` (the
    wire check, not counted by the safety layer)."""
    rig = ur_rig(mode="servoL")
    with pytest.raises(ServerError) as e:
        rig.client.command(_act(np.nan))
    assert e.value.code == RP.RobotErrorCode.UNSAFE_ACTION
    with pytest.raises((ServerError, ValueError)) as e2:
        rig.client.command(np.zeros(6, np.float32))
    if isinstance(e2.value, ServerError):
        assert e2.value.code == "bad_field"
    st = rig.other.status()
    assert st["counters"]["rejected_unsafe"] == 1 and st["safety"]["rejected"] == 1


def test_unsafe_action_is_not_a_safety_fault():
    assert not issubclass(SafetyFault, UnsafeAction) and not issubclass(UnsafeAction, SafetyFault)
