"""Action spaces on the robot side: eef_absolute runs on an adapter's eef_delta path and joint_delta on its
joint_absolute path (robot_bridge.robots.base). The eef_absolute checks drive the real robosuite arm (SimRobot);
the joint_delta check against franky-sim is in test_robot_franka.py."""

from __future__ import annotations

import numpy as np
import pytest
from robot_helpers import sim_env_no_render

from robot_bridge.geometry import quat_to_axis_angle
from robot_bridge.robots.base import ACTION_KINDS, ActionSpec
from robot_bridge.safety import UnsafeAction


def test_each_kind_records_units_and_runs_as_one_of_two_executed_kinds():
    assert ActionSpec().units[:3] == ("action",) * 3 and ActionSpec().units[6] == "gripper"
    ab = ActionSpec.eef_absolute()
    assert ab.to_dict()["units"] == ["m", "m", "m", "rad", "rad", "rad", "gripper"] and ab.hold == "last"
    assert ab.executed().kind == "eef_delta" and ab.executed().names[0] == "dx"
    jd = ActionSpec.joint_delta(7)
    assert jd.units == ("rad",) * 7 + ("gripper",) and jd.hold == "zeros" and jd.executed().kind == "joint_absolute"
    assert {ActionSpec.of_kind(k, 7).executes for k in ACTION_KINDS} == {"eef_delta", "joint_absolute"}
    with pytest.raises(ValueError, match="joint count is not known"):
        ActionSpec.of_kind("joint_delta", None)
    with pytest.raises(ValueError, match="eef_absolute.*dim 7"):
        ActionSpec(kind="eef_absolute", dim=8, gripper_index=7)


def test_an_adapter_refuses_a_kind_it_cannot_run_and_names_what_it_runs():
    from robot_bridge.robots.ur import URConfig, URRobot

    assert URRobot.supported_kinds() == ("eef_delta", "eef_absolute")
    with pytest.raises(ValueError, match=r"executes \['eef_delta', 'eef_absolute'\], not 'joint_delta'"):
        URRobot(URConfig(host="127.0.0.1"), sdk=object(), action_spec=ActionSpec.joint_delta(6))  # never connected


@pytest.fixture(scope="module")
def env():
    e = sim_env_no_render()
    yield e
    e.close()


def test_eef_absolute_targets_move_the_simulated_arm_there_and_hold(env):
    """A fixed absolute pose 6 cm away (x, y) and 4 cm up, sent every step: the safety layer limits each step to the
    delta range (5 cm), the arm converges on the target and stays; the applied deltas shrink to ~0."""
    from sim.robot import SimRobot

    robot = SimRobot(env=env, action_spec=ActionSpec.eef_absolute())
    assert SimRobot.supported_kinds() == ("eef_delta", "eef_absolute")
    with robot:
        robot.reset(seed=0)
        s0 = robot.get_state()
        target = np.concatenate([s0[:3] + [0.04, -0.04, 0.04], quat_to_axis_angle(s0[3:7]), [-1.0]]).astype(np.float32)
        applied = [robot.send_action(target) for _ in range(60)]
        s1 = robot.get_state()
        with pytest.raises(UnsafeAction, match="expected 7 finite numbers"):
            robot.send_action(np.full(7, np.nan, np.float32))
    np.testing.assert_allclose(s1[:3], target[:3], atol=0.01)
    assert np.all(np.abs(applied[0][:3]) > 0.5) and np.abs(applied[-1][:3]).max() < 0.2
    # the orientation was held: the target's rotation vector is the start's
    rot = quat_to_axis_angle(s1[3:7]) - target[3:6]
    assert np.linalg.norm(rot) < 0.05
    assert robot.safety.summary()["rejected"] == 1
