"""Where does a policy stall? Roll out episodes and print the hand, the objects and the executed action.

    .venv/bin/python benchmarks/trace_episode.py --policy runs/pickplacecan_tiny_target_3600/policy \
        --task PickPlaceCan --seeds 1000000,1000001 --every 6

Same rollout as `vla eval` (replan every --replan steps from the policy's own chunks, the eval's seeds), plus one
line every --every steps: the end effector's world position, object rows 0 and 1 (`env.privileged()`; row 0 is the
object to grasp, row 1 the place target where the task has one), the distance hand -> object 0, and the executed
action (x, y, z in units of 5 cm, gripper -1 open / +1 closed). --json writes the full per-step trace.

--classify prints one label per episode and a count per label: which object row was lifted first ("object 0" = the
one to move, "object 1" = the place target, e.g. StackColor's base cube; "none lifted"), whether the episode ended
with row 1 stacked on row 0 ("reversed stack"), whether the hand still held a raised object 0 at the end, and whether
it opened the gripper over row 1 and then lifted object 0 again still in the hand ("re-lifted ... after opening"). With
--failures-from <eval dir> it traces the failed episodes of that `vla eval` run (same seeds):

    .venv/bin/python benchmarks/trace_episode.py --policy runs/multitask_tiny_can15/checkpoints/step_007200 \
        --task StackColor --replan 4 --failures-from runs/multitask_tiny_can15/eval7200_replan4 --classify --every 0
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


LIFT_M = 0.03  # an object counts as lifted once 3 cm above where it started
STACK_XY_M, STACK_Z_M = 0.03, 0.02
HELD_M = 0.02  # object 0 counts as in the hand while its centre is this close to the end effector
RELEASE_XY_M, RELIFT_M = 0.02, 0.01


def classify(tr: dict) -> str:
    """A label for one traced episode from its object rows 0-1 and hand positions (see the module docstring)."""
    obj = np.asarray([s["objects"] for s in tr["steps"]])  # (T, 2, 3)
    eef = np.asarray([s["eef"] for s in tr["steps"]])  # (T, 3)
    up = obj[:, :, 2] > obj[0, :, 2] + LIFT_M  # (T, 2)
    first = [int(np.argmax(up[:, i])) if up[:, i].any() else None for i in range(2)]
    if first[0] is None and first[1] is None:
        label = "none lifted"
    elif first[1] is not None and (first[0] is None or first[1] < first[0]):
        label = "object 1 lifted first"
    else:
        label = "object 0 lifted first"
    end = obj[-1]
    if np.linalg.norm(end[0, :2] - end[1, :2]) < STACK_XY_M and end[1, 2] > end[0, 2] + STACK_Z_M:
        label += ", reversed stack"
    if np.linalg.norm(eef[-1] - obj[-1, 0]) < HELD_M and up[-1, 0]:
        label += ", holding object 0 at the end"
    grip = np.asarray([s["action"][6] for s in tr["steps"]])  # (T,)
    if relifted_after_opening(obj, eef, grip):
        label += ", re-lifted object 0 after opening over object 1"
    return ("success: " if tr["success"] else "failure: ") + label


def relifted_after_opening(obj: np.ndarray, eef: np.ndarray, grip: np.ndarray) -> bool:
    """True when the gripper was told to open while holding object 0 within RELEASE_XY_M (x, y) of object 1, and
    object 0 later rose RELIFT_M higher still in the hand: the release was cut short by a lift.
    obj: (T, 2, 3) object rows 0-1, eef: (T, 3), grip: (T,) gripper actions (-1 open, +1 closed)."""
    held = np.linalg.norm(eef - obj[:, 0], axis=1) < HELD_M  # (T,)
    over = np.linalg.norm(obj[:, 0, :2] - obj[:, 1, :2], axis=1) < RELEASE_XY_M  # (T,)
    for t in np.nonzero(held & over & (grip < 0))[0]:
        if (held[t:] & (obj[t:, 0, 2] > obj[t, 0, 2] + RELIFT_M)).any():
            return True
    return False


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--seeds", default="1000000", help="comma-separated; vla eval's episode i has seed 1000000 + i")
    ap.add_argument("--every", type=int, default=6, help="print one line every N steps")
    ap.add_argument("--replan", type=int, default=None,
                    help="actions executed per chunk (default: the policy's n_action_steps, as vla eval)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the full per-step traces here")
    ap.add_argument("--classify", action="store_true", help="label each episode and count the labels")
    ap.add_argument("--failures-from", default=None,
                    help="a vla eval --out directory: trace its failed episodes of --task (replaces --seeds)")
    args = ap.parse_args(argv)
    if args.every < 0:
        raise SystemExit(f"--every: expected >= 0 (0: no per-step lines), got {args.every}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.failures_from:
        path = os.path.join(args.failures_from, f"episodes_{args.task}.jsonl")
        if not os.path.exists(path):
            raise SystemExit(f"--failures-from: {path} not found (run vla eval --task {args.task} --out ... first)")
        with open(path) as f:
            seeds = [r["seed"] for r in map(json.loads, f) if not r["success"]]
    torch.set_num_threads(args.threads)
    from sim.env import VLAEnv
    from vla.policy import Policy

    policy = Policy.from_pretrained(args.policy)
    env = VLAEnv(args.task, cameras=policy.cfg.cameras)
    replan = args.replan or policy.n_action_steps
    out = []
    for seed in seeds:
        tr = trace(policy, env, seed, replan)
        out.append(tr)
        print(f"seed {seed}: {'success' if tr['success'] else 'failure'} after {tr['length']} steps"
              + (f"  [{classify(tr)}]" if args.classify else ""))
        for s in tr["steps"][:: args.every] if args.every else []:
            eef, obj = np.asarray(s["eef"]), np.asarray(s["objects"])
            print(f"  t {s['t']:3d}  eef {np.round(eef, 3)}  obj0 {np.round(obj[0], 3)}  obj1 {np.round(obj[1], 3)}"
                  f"  |eef-obj0| {np.linalg.norm(eef - obj[0]) * 100:5.1f} cm  a {np.round(s['action'][:3], 2)}"
                  f"  grip {s['action'][6]:+.0f}")
    env.close()
    if args.classify:
        from collections import Counter

        counts = Counter(classify(tr) for tr in out)
        print(f"{len(out)} episodes:")
        for label, n in counts.most_common():
            print(f"  {n:3d}  {label}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
