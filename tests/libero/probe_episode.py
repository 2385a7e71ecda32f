"""Runs inside LIBERO's venv (tests/test_libero.py starts it): one real libero_object episode through
sim.libero.worker.run_episode with a recording policy (zero actions), and prints what the episode loop did as JSON.
The policy is a stand-in for the server here because the test asks what the *env side* sends and executes."""

import json
import sys

import numpy as np

from sim.libero import conventions as C
from sim.libero import worker as W


class RecordingPolicy:
    def __init__(self, env_log):
        self.env_log = env_log
        self.calls = []

    def reset(self):
        pass

    def infer(self, obs, episode_id=None, step=None):
        raw = self.env_log["last_raw"]
        self.calls.append({
            "env_steps_before": self.env_log["steps"],
            "actions_before": [list(a) for a in self.env_log["actions"]],
            "image_rotated": all(np.array_equal(obs["images"][cam], raw[key][::-1, ::-1]) for cam, key in CAMS.items()),
            "image_flipped_only": all(np.array_equal(obs["images"][cam], raw[key][::-1]) for cam, key in CAMS.items()),
            "image_shape": list(obs["images"]["agentview"].shape),
            "state": obs["state"].tolist(),
            "state_expected": C.libero_state(raw["robot0_eef_pos"], raw["robot0_eef_quat"],
                                             raw["robot0_gripper_qpos"]),
            "instruction": obs["instruction"],
        })
        return {"actions": np.zeros((8, 7), np.float32)}


conv = C.get_conventions(sys.argv[1])
suite_name, trial, max_steps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from libero.libero import benchmark  # noqa: E402

suite = benchmark.get_benchmark_dict()[suite_name]()
env, task = W.make_env(suite, 0, conv, 64)
init_states = suite.get_task_init_states(0)
CAMS = W.camera_mapping(["agentview", "wrist"])
log = {"steps": 0, "actions": [], "last_raw": None, "init_arg": None}
step, set_init = env.step, env.set_init_state


def counting_step(action):
    log["steps"] += 1
    log["actions"].append([float(v) for v in action])
    out = step(action)
    log["last_raw"] = out[0]
    return out


def recording_set_init(state):
    log["init_arg"] = np.asarray(state)
    raw = set_init(state)
    log["last_raw"] = raw
    return raw


env.step, env.set_init_state = counting_step, recording_set_init
policy = RecordingPolicy(log)
res = W.run_episode(env, policy, init_states, trial, CAMS, task.language, conv, max_steps, conv.replan_every)
env.reset()
set_init(init_states[trial])
print(json.dumps({
    "result": res, "env_steps": log["steps"], "calls": policy.calls[:2], "n_calls": len(policy.calls),
    "init_arg_is_trial_state": bool(np.array_equal(log["init_arg"], init_states[trial])),
    "sim_state_matches_init": bool(np.allclose(env.env.sim.get_state().flatten(), init_states[trial], atol=1e-6)),
    "n_init_states": len(init_states), "language": task.language,
}))
sys.stdout.flush()
import os  # noqa: E402

os._exit(0)
