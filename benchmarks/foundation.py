"""Foundation benchmarks: env step time, expert success per task, collection rate.

    .venv/bin/python benchmarks/foundation.py [--seeds 50] [--noise 0.1] [--out benchmarks/results/foundation.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from common import command, write_json

from sim.collect import collect
from sim.env import VLAEnv
from sim.experts import make_expert, run_expert_episode
from sim.tasks import TASKS


def step_times(task: str, cameras, n: int = 200, image_size: int = 128, observe_every: int = 1) -> dict:
    """Per-step ms. observe_every k > 1: advance() every step and observe() (render the cameras) every k-th,
    as a policy that replans every k steps does; k = 1 is a plain env.step()."""
    env = VLAEnv(task, image_size=image_size, cameras=cameras, render_mode="rgb_array" if cameras else None)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    ts = []
    for i in range(n + 10):
        a = rng.uniform(-0.3, 0.3, 7)
        t0 = time.perf_counter()
        if observe_every == 1:
            _, _, term, trunc, _ = env.step(a)
        else:
            _, term, trunc, _ = env.advance(a)
            if i % observe_every == 0:
                env.observe()
        if i >= 10:
            ts.append((time.perf_counter() - t0) * 1e3)
        if term or trunc:
            env.reset(seed=i)
    env.close()
    return {"p50": float(np.percentile(ts, 50)), "p99": float(np.percentile(ts, 99)), "mean": float(np.mean(ts)),
            "n": n}


def expert_success(task: str, seeds: int, noise: float) -> dict:
    env = VLAEnv(task, cameras=(), render_mode=None)
    ex = make_expert(task, noise=noise)
    res = [run_expert_episode(env, ex, seed=s) for s in range(seeds)]
    env.close()
    return {"success": float(np.mean([r[0] for r in res])), "episodes": seeds,
            "mean_steps": float(np.mean([r[1] for r in res]))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--collect-demos", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/foundation.json")
    ap.add_argument("--steps-only", action="store_true", help="only the env step times (keeps the rest of --out)")
    args = ap.parse_args()
    cmd = command(__file__)
    out: dict = {"command": cmd.strip(),
                 "machine": f"{os.cpu_count()} CPU cores, MUJOCO_GL={os.environ.get('MUJOCO_GL')}"}
    print("step times (Lift) ...", flush=True)
    nc = step_times("Lift", ())
    tc = step_times("Lift", ("agentview", "wrist"))
    t8 = step_times("Lift", ("agentview", "wrist"), observe_every=8)
    out["step_ms"] = {"no_camera_p50": nc["p50"], "no_camera_p99": nc["p99"],
                      "two_cameras_128_p50": tc["p50"], "two_cameras_128_p99": tc["p99"],
                      "two_cameras_128_observed_every_8_mean": t8["mean"], "two_cameras_128_mean": tc["mean"]}
    print(json.dumps(out["step_ms"]), flush=True)
    if args.steps_only:
        if os.path.exists(args.out):
            with open(args.out) as f:
                out = {**json.load(f), "step_ms": out["step_ms"], "step_ms_command": out["command"]}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".tmp", "w") as f:
            json.dump(out, f, indent=2)
        os.replace(args.out + ".tmp", args.out)
        return
    out["experts"] = {}
    for task in TASKS:
        t0 = time.time()
        out["experts"][task] = expert_success(task, args.seeds, args.noise)
        print(task, out["experts"][task], f"{time.time() - t0:.0f}s", flush=True)
    out["expert_noise"] = args.noise
    with tempfile.TemporaryDirectory() as d:
        res = collect("Lift", episodes=args.collect_demos, out=os.path.join(d, "c.hdf5"), image_size=128,
                      noise=args.noise, progress=False)
    out["collect_demos_per_min"] = res.demos_per_min
    out["collect_note"] = f"Lift, {args.collect_demos} demos, two 128 px cameras, env creation included"
    print("collection", res.demos_per_min, "demos/min", flush=True)
    write_json(args.out, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
