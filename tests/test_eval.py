"""A short real evaluation: robosuite env, a real (untrained) tiny policy, per-episode JSON, video, determinism."""

import json
import os

import pytest

from sim.evaluate import evaluate_policy_dir, format_table
from vla.policy import Policy

pytestmark = pytest.mark.slow  # evaluation episodes: `make test` runs them, `make test-fast` skips them


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("p") / "policy")
    p = Policy.untrained("tiny", seed=1)
    p.n_action_steps = 4
    p.save_pretrained(d)
    return d


def test_eval_episode_outputs_and_rerun_identical(policy_dir, tmp_path):
    kw = dict(task="Lift", episodes=1, image_size=64, videos=1, keep_actions=True, max_steps=40, threads=1)
    a = evaluate_policy_dir(policy_dir, out_dir=str(tmp_path / "a"), **kw)
    b = evaluate_policy_dir(policy_dir, out_dir=str(tmp_path / "b"), **kw)
    assert a["episodes"] == 1 and a["replan_every"] == 4
    assert a["success_rate"] == b["success_rate"] and a["mean_length"] == b["mean_length"]
    rows_a = [json.loads(line) for line in open(tmp_path / "a" / "episodes_Lift.jsonl")]
    rows_b = [json.loads(line) for line in open(tmp_path / "b" / "episodes_Lift.jsonl")]
    assert rows_a[0]["actions"] == rows_b[0]["actions"]  # same seed -> same actions
    assert len(rows_a[0]["actions"]) == rows_a[0]["length"] > 0
    vids = os.listdir(tmp_path / "a" / "videos")
    assert len(vids) == 1 and vids[0].endswith(".mp4") and os.path.getsize(tmp_path / "a" / "videos" / vids[0]) > 1000
    assert "Lift" in format_table([a])
    summary = json.load(open(tmp_path / "a" / "summary_Lift.json"))
    assert summary["success_rate"] == a["success_rate"]


def test_failure_videos_keep_the_first_failures_across_workers(policy_dir, tmp_path):
    # 3 episodes over 2 workers (seeds 0, 2 and 1): an untrained policy fails all in 8 steps, each worker writes
    # its first failure, and only the lowest failing seed's video is kept
    s = evaluate_policy_dir(policy_dir, task="Lift", episodes=3, image_size=64, videos=0, failure_videos=1,
                            max_steps=8, workers=2, threads=1, out_dir=str(tmp_path), progress=False)
    assert s["success_rate"] == 0.0
    rows = [json.loads(line) for line in open(tmp_path / "episodes_Lift.jsonl")]
    base = rows[0]["seed"]
    assert [r["seed"] for r in rows] == [base, base + 1, base + 2]
    assert os.listdir(tmp_path / "videos") == [f"Lift_seed{base}_fail.mp4"]
    assert rows[0]["video"] == f"videos/Lift_seed{base}_fail.mp4" and "video" not in rows[1] and "video" not in rows[2]
    with pytest.raises(ValueError, match="failure_videos"):
        evaluate_policy_dir(policy_dir, task="Lift", episodes=1, failure_videos=-1, out_dir=str(tmp_path))


def test_temporal_ensembler_weights_expiry_and_errors():
    import numpy as np

    from robot_bridge.ensemble import TemporalEnsembler

    e = TemporalEnsembler(coeff=0.0)
    e.add(0, np.full((4, 2), 1.0))
    e.add(2, np.full((4, 2), 3.0))
    assert np.allclose(e.action(1), 1.0)  # only the first chunk covers step 1
    assert np.allclose(e.action(2), 2.0)  # both: plain mean
    assert np.allclose(e.action(4), 3.0)  # the first chunk (steps 0..3) has expired
    w = TemporalEnsembler(coeff=1.0)
    w.add(0, np.zeros((4, 1)))
    w.add(1, np.ones((4, 1)))
    # w_i = exp(-i), i = 0 the oldest: the old chunk weighs e times the new one
    assert np.allclose(w.action(1), 1.0 / (1.0 + np.e))
    with pytest.raises(ValueError, match="t: expected a step after"):
        w.add(1, np.ones((4, 1)))
    with pytest.raises(ValueError, match="chunk: expected"):
        w.add(5, np.ones(4))
    with pytest.raises(ValueError, match="no chunk covers step 9"):
        w.action(9)
    with pytest.raises(ValueError, match="coeff"):
        TemporalEnsembler(float("nan"))
    n = TemporalEnsembler(coeff=-100.0)  # newest first, and twelve chunks deep: no weight overflows
    for s in range(12):
        n.add(s, np.full((12, 1), float(s)))
    assert np.allclose(n.action(11), 11.0)


def test_eval_rejects_a_bad_ensemble_coefficient_before_any_episode(policy_dir, tmp_path):
    with pytest.raises(ValueError, match="ensemble coeff: expected a finite float"):
        evaluate_policy_dir(policy_dir, task="Lift", episodes=2, workers=2, ensemble=float("inf"),
                            out_dir=str(tmp_path))
    assert not os.path.exists(tmp_path / "episodes_Lift.jsonl")


def test_rollout_with_ensemble_executes_the_mean_of_overlapping_chunks(policy_dir):
    # the real untrained tiny policy in the real Lift env; the wrapper only records the chunks it returns
    import numpy as np

    from sim.env import VLAEnv
    from sim.evaluate import rollout

    class Recording:
        def __init__(self, p):
            self.p, self.chunks = p, []

        def reset(self):
            self.p.reset()

        def infer(self, obs):
            out = self.p.infer(obs)
            self.chunks.append(np.asarray(out["actions"], dtype=np.float32))
            return out

    policy = Recording(Policy.from_pretrained(policy_dir))
    env = VLAEnv("Lift", image_size=64, cameras=policy.p.cfg.cameras)
    try:
        r = rollout(env, policy, seed=3, replan_every=2, keep_actions=True, max_steps=10, ensemble=0.0)
        plain = rollout(env, policy, seed=3, replan_every=2, keep_actions=True, max_steps=10)
    finally:
        env.close()
    chunks = policy.chunks[:5]  # the ensembled episode asked at steps 0, 2, 4, 6, 8
    assert len(policy.chunks) == 10
    for t, a in enumerate(r.actions):
        covering = [c[t - 2 * i] for i, c in enumerate(chunks) if 0 <= t - 2 * i < len(c)]
        assert np.allclose(a, np.mean(covering, axis=0), atol=1e-6), t
    # without ensembling step 1 runs the first chunk's action 1; with it, the same (one chunk covers it)
    assert np.allclose(r.actions[1], chunks[0][1]) and np.allclose(plain.actions[0], policy.chunks[5][0])
    assert not np.allclose(r.actions[2], chunks[1][0])  # step 2 mixes chunks 0 and 1


def test_trace_classify_labels_which_object_was_lifted_first_and_cut_short_releases():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "trace_episode", os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "trace_episode.py"))
    te = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(te)

    def trace(rows, eef, success=False, grip=None):  # rows: per step [[x, y, z] of object 0, [x, y, z] of object 1]
        grip = grip or [1.0] * len(rows)  # the gripper action per step (-1 open, +1 closed)
        return {"success": success, "steps": [{"objects": o, "eef": e, "action": [0.0] * 6 + [g]}
                                              for o, e, g in zip(rows, eef, grip)]}

    base = [[0.0, 0.0, 0.82], [0.1, 0.0, 0.82]]
    # the base cube (row 1) is carried onto object 0: reversed stack
    rev = [base, [[0.0, 0.0, 0.82], [0.1, 0.0, 0.90]], [[0.0, 0.0, 0.82], [0.0, 0.0, 0.86]]]
    assert te.classify(trace(rev, [[0.1, 0, 0.9]] * 3)) == "failure: object 1 lifted first, reversed stack"
    # object 0 lifted and still held above the table at the end
    held = [base, [[0.0, 0.0, 0.90], [0.1, 0.0, 0.82]], [[0.05, 0.0, 0.90], [0.1, 0.0, 0.82]]]
    assert te.classify(trace(held, [[0, 0, 0.9], [0, 0, 0.9], [0.05, 0, 0.9]])) == (
        "failure: object 0 lifted first, holding object 0 at the end")
    assert te.classify(trace([base, base], [[0, 0, 1.0]] * 2, success=True)) == "success: none lifted"
    # object 0 carried over object 1, the gripper told to open, then object 0 lifted again still in the hand
    over = [base, [[0.1, 0.0, 0.90], [0.1, 0.0, 0.82]], [[0.1, 0.0, 0.88], [0.1, 0.0, 0.82]],
            [[0.1, 0.0, 0.92], [0.1, 0.0, 0.82]]]
    hand = [[0.1, 0.0, o[0][2] + 0.005] for o in over]
    assert te.classify(trace(over, hand, grip=[-1, 1, -1, 1])) == (
        "failure: object 0 lifted first, holding object 0 at the end, re-lifted object 0 after opening over object 1")
    # the same without the open command, or with object 0 left behind (not in the hand) when the hand rises: no label
    assert "re-lifted" not in te.classify(trace(over, hand, grip=[-1, 1, 1, 1]))
    assert "re-lifted" not in te.classify(trace(over[:3] + [[[0.1, 0.0, 0.86], [0.1, 0.0, 0.82]]],
                                                hand[:3] + [[0.1, 0.0, 0.95]], grip=[-1, 1, -1, -1]))
