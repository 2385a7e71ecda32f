"""A short real evaluation: robosuite env, a real (untrained) tiny policy, per-episode JSON, video, determinism."""

import json
import os

import pytest

from sim.evaluate import evaluate_policy_dir, format_table
from vla.policy import Policy


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
