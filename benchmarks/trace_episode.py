"""Where does a policy stall? Roll out episodes and print the hand, the objects and the executed action.

    .venv/bin/python benchmarks/trace_episode.py --policy runs/pickplacecan_tiny_target_3600/policy \
        --task PickPlaceCan --seeds 1000000,1000001 --every 6

Same rollout as `vla eval` (replan every --replan steps from the policy's own chunks, the eval's seeds), plus one
line every --every steps: the end effector's world position, object rows 0 and 1 (`env.privileged()`; row 0 is the
object to grasp, row 1 the place target where the task has one), the distance hand -> object 0, and the executed
action (x, y, z in units of 5 cm, gripper -1 open / +1 closed). --json writes the full per-step trace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("MUJOCO_GL", "egl")


def trace(policy, env, seed: int, replan: int) -> dict:
    """One `vla eval` rollout: per step eef (3,), object rows 0-1 (2, 3), action (7,); success and length."""
    from sim.evaluate import rollout

    steps = []

    def record(t, a):
        p = env.privileged()
        steps.append({"t": t, "eef": p["eef_pos"].round(4).tolist(), "objects": p["object_pos"][:2].round(4).tolist(),
                      "action": np.asarray(a).round(3).tolist()})

    r = rollout(env, policy, seed, replan, on_step=record)
    return {"seed": seed, "success": bool(r.success), "length": r.length, "steps": steps}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--seeds", default="1000000", help="comma-separated; vla eval's episode i has seed 1000000 + i")
    ap.add_argument("--every", type=int, default=6, help="print one line every N steps")
    ap.add_argument("--replan", type=int, default=None, help="actions executed per chunk (default: the policy's n_action_steps, as vla eval)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the full per-step traces here")
    args = ap.parse_args(argv)
    if args.every < 1:
        raise SystemExit(f"--every: expected >= 1, got {args.every}")
    torch.set_num_threads(args.threads)
    from sim.env import VLAEnv
    from vla.policy import Policy

    policy = Policy.from_pretrained(args.policy)
    env = VLAEnv(args.task, cameras=policy.cfg.cameras)
    replan = args.replan or policy.n_action_steps
    out = []
    for seed in (int(s) for s in args.seeds.split(",")):
        tr = trace(policy, env, seed, replan)
        out.append(tr)
        print(f"seed {seed}: {'success' if tr['success'] else 'failure'} after {tr['length']} steps")
        for s in tr["steps"][:: args.every]:
            eef, obj = np.asarray(s["eef"]), np.asarray(s["objects"])
            print(f"  t {s['t']:3d}  eef {np.round(eef, 3)}  obj0 {np.round(obj[0], 3)}  obj1 {np.round(obj[1], 3)}"
                  f"  |eef-obj0| {np.linalg.norm(eef - obj[0]) * 100:5.1f} cm  a {np.round(s['action'][:3], 2)}"
                  f"  grip {s['action'][6]:+.0f}")
    env.close()
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
