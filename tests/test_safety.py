"""Safety layer: each rule clips what it should, counts and logs it, and leaves everything else alone."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from robot_bridge.robots.base import ActionSpec
from robot_bridge.safety import SafetyConfig, SafetyFilter, UnsafeAction

SPEC = ActionSpec()  # 0.05 m and 0.5 rad per unit
REF = np.array([0.5, 0.0, 0.3])


def _f(**kw) -> SafetyFilter:
    return SafetyFilter(SafetyConfig(**kw), SPEC)


def _a(*vals) -> np.ndarray:
    a = np.zeros(7, np.float32)
    a[: len(vals)] = vals
    return a


def test_inside_all_limits_nothing_changes():
    f = _f(workspace_low=(0, -1, 0), workspace_high=(1, 1, 1))
    a = _a(0.1, -0.1, 0.05, 0.02, 0.0, -0.03, 0.7)
    out = f.filter(a, REF)
    np.testing.assert_array_equal(out, a)
    s = f.summary()
    assert s["commands"] == 1 and s["intervened"] == 0 and not f.recent


def test_action_limits(caplog):
    f = _f(max_step_translation_m=1.0, max_step_rotation_rad=10.0)
    with caplog.at_level(logging.INFO, logger="robot_bridge.safety"):
        out = f.filter(_a(1.5, -2.0, 0.5, 0, 0, 0, 0), REF)
    np.testing.assert_allclose(out[:3], [1.0, -1.0, 0.5])
    assert f.counts["action_limits"] == 1 and f.intervened == 1
    assert "action_limits" in caplog.text  # logged
    assert f.recent[-1].rule == "action_limits" and f.recent[-1].before[:2] == [1.5, -2.0]


def test_gripper_limits():
    f = _f(gripper_low=-1.0, gripper_high=0.5)
    out = f.filter(_a(0, 0, 0, 0, 0, 0, 0.9), REF)
    assert out[6] == 0.5 and f.counts["gripper_limits"] == 1
    assert f.filter(_a(0, 0, 0, 0, 0, 0, -0.9), REF)[6] == np.float32(-0.9)
    assert f.counts["gripper_limits"] == 1


def test_max_translation_keeps_direction():
    f = _f(max_step_translation_m=0.01)
    out = f.filter(_a(1.0, 1.0, 0.0), REF)  # 70.7 mm asked
    d = out[:3] * SPEC.pos_scale_m
    assert np.linalg.norm(d) == pytest.approx(0.01, rel=1e-5)
    assert d[0] == pytest.approx(d[1]) and d[2] == 0
    assert f.counts["max_translation"] == 1
    f.filter(_a(0.2, 0, 0), REF)  # exactly 10 mm in float32: not an intervention
    assert f.counts["max_translation"] == 1


def test_max_rotation():
    f = _f(max_step_rotation_rad=0.05)
    out = f.filter(_a(0, 0, 0, 0.0, 0.0, 1.0), REF)  # 0.5 rad asked
    assert out[5] * SPEC.rot_scale_rad == pytest.approx(0.05, rel=1e-5)
    assert f.counts["max_rotation"] == 1 and f.counts["max_translation"] == 0


def test_workspace_box_clips_the_target():
    f = _f(workspace_low=(0.3, -0.2, 0.295), workspace_high=(0.7, 0.2, 0.31), max_step_translation_m=0.05)
    out = f.filter(_a(0.0, 0.0, 1.0), REF)  # z target 0.35 > 0.31
    assert out[2] * SPEC.pos_scale_m == pytest.approx(0.01, abs=1e-6)
    assert f.counts["workspace"] == 1
    out = f.filter(_a(0.0, 0.0, -1.0), REF)  # 0.25 < 0.295
    assert out[2] * SPEC.pos_scale_m == pytest.approx(-0.005, abs=1e-6)
    assert f.counts["workspace"] == 2 and f.counts["max_translation"] == 0


def test_outside_the_box_walks_back_one_step_at_a_time():
    f = _f(workspace_low=(0.3, -0.2, 0.0), workspace_high=(0.7, 0.2, 0.2), max_step_translation_m=0.01)
    out = f.filter(_a(0, 0, 0), REF)  # reference 10 cm above the box, no motion asked
    d = out[:3] * SPEC.pos_scale_m
    np.testing.assert_allclose(d, [0, 0, -0.01], atol=1e-6)  # towards the box, no faster than the step limit
    assert f.counts["workspace"] == 1 and f.counts["max_translation"] == 1


def test_non_finite_or_misshapen_actions_are_rejected():
    f = _f()
    for bad in (_a(np.nan), _a(0, np.inf), np.zeros(6, np.float32), "seven", None):
        with pytest.raises(UnsafeAction):
            f.filter(bad, REF)
    assert f.counts["rejected"] == 5 and f.commands == 5 and f.intervened == 0


def test_no_reference_skips_only_the_box():
    f = _f(workspace_low=(0, 0, 0), workspace_high=(0.1, 0.1, 0.1), max_step_translation_m=0.01)
    out = f.filter(_a(1.0), None)
    assert f.counts["workspace"] == 0 and f.counts["max_translation"] == 1
    assert out[0] * SPEC.pos_scale_m == pytest.approx(0.01, rel=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="workspace"):
        SafetyConfig(workspace_low=(0, 0, 0))
    with pytest.raises(ValueError, match="workspace"):
        SafetyConfig(workspace_low=(1, 0, 0), workspace_high=(0, 1, 1))
    with pytest.raises(ValueError, match="max_step_translation_m"):
        SafetyConfig(max_step_translation_m=0)
    with pytest.raises(ValueError, match="gripper_low"):
        SafetyConfig(gripper_low=0.5, gripper_high=0.2)


def test_permissive_config_never_intervenes_within_the_action_space():
    f = SafetyFilter(SafetyConfig.permissive(SPEC), SPEC)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (200, 7)).astype(np.float32)
    acts[:10] = np.sign(acts[:10])  # corners: the largest steps
    for a in acts:
        np.testing.assert_array_equal(f.filter(a, REF), a)
    assert f.intervened == 0
