"""Real-time chunking under inference delay (issue 26): success and smoothness of the async control loop when each
chunk arrives d control steps late, for each way of taking the new chunk over.

    python benchmarks/rtc.py --policy vla/pretrained/lift_tiny_fast --task Lift --episodes 20 --delays 2 4 6
        # writes benchmarks/results/rtc.json and rtc.png

The policy runs behind `vla serve` (its own process, so the simulator and the model each get a core) on loopback;
`vla eval --server ... --mode async` evaluates it in MuJoCo at 20 Hz with `--inject-delay-ms` = d x 50 ms added to
every chunk, on top of the model's own latency (reported: `latency_ms_p50` and the loop's own delay estimate
`rtc_delay_steps_mean`). With chunks of H = 8 and one request in flight, a round trip of d steps yields H - d new
actions, so delays beyond H/2 starve every strategy. Strategies, same seeds for all:

  naive      blend none: switch to the new chunk when it arrives (its first steps, already past, dropped)
  linear     cross-fade old and new chunk over their overlap
  inpaint    token inpainting: the d actions that will run meanwhile are sent as prefix_actions and kept
  sync       pause: the simulator waits for every chunk (no clock; the delay costs time, not success)

Smoothness: mean |a_t - a_(t-1)| over the translation dims of the executed actions, and the same at chunk switches
only (the step where a new chunk's first action runs), in action units.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from results_io import write_json  # noqa: E402


def smoothness(out_dir: str, task: str) -> dict:
    """From the per-episode JSONL (actions, sources): mean |delta a| (dims 0..2) overall and at chunk switches."""
    allj, sw = [], []
    with open(os.path.join(out_dir, f"episodes_{task}.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            a = np.asarray(r.get("actions") or [], np.float64)
            src = r.get("sources") or []
            if len(a) < 2:
                continue
            d = np.abs(np.diff(a[:, :3], axis=0)).mean(axis=1)  # (T-1,)
            allj.extend(d.tolist())
            sw.extend(d[i - 1] for i in range(1, len(src)) if src[i] != src[i - 1] and src[i] >= 0 and i < len(a))
    return {"jerk_mean": float(np.mean(allj)) if allj else None,
            "jerk_at_switch_mean": float(np.mean(sw)) if sw else None, "switches": len(sw)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=os.path.join(ROOT, "vla/pretrained/lift_tiny_fast"))
    ap.add_argument("--task", default="Lift")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--delays", type=int, nargs="+", default=[0, 1, 2, 3], help="injected delay in control steps")
    ap.add_argument("--threads", type=int, default=1, help="the policy server's torch threads")
    ap.add_argument("--strategies", nargs="+", default=["naive", "linear", "inpaint"])
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/rtc.json"))
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import socket
    import subprocess

    from robot_bridge.client import PolicyClient
    from sim.remote_eval import evaluate_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    addr = f"tcp://127.0.0.1:{port}"
    srv = subprocess.Popen([sys.executable, "-m", "vla.cli", "serve", "--policy", args.policy, "--bind", addr,
                            "--threads", str(args.threads)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    probe = PolicyClient(addr, timeout_ms=60_000, retries=0)
    meta = probe.hello()  # waits for the server to come up
    probe.close()
    work = os.path.join(ROOT, "eval", "rtc")
    res: dict = {"command": "python benchmarks/rtc.py " + " ".join(sys.argv[1:]), "policy": os.path.relpath(
        args.policy, ROOT), "task": args.task, "episodes": args.episodes, "rate_hz": args.rate,
        "chunk_size": meta["chunk_size"], "decoder": meta.get("policy", {}).get("decoder"), "cells": []}
    blend = {"naive": "none", "linear": "linear", "inpaint": "inpaint"}
    t_all = time.time()
    try:
        cells = [(d, s) for d in args.delays for s in args.strategies] + [(0, "sync")]
        for d, strat in cells:
            out = os.path.join(work, f"{strat}_d{d}")
            print(f"[rtc] {strat}, delay {d} steps", flush=True)
            mode = "sync" if strat == "sync" else "async"
            s = evaluate_server(addr, args.task, episodes=args.episodes, videos=0, out_dir=out, mode=mode,
                                rate_hz=args.rate, keep_actions=True, progress=False,
                                blend=blend.get(strat, "none"), inject_delay_ms=d * 1e3 / args.rate if mode == "async"
                                else 0.0)
            cell = {"strategy": strat, "delay_steps": d, "success_rate": s["success_rate"],
                    "mean_length": s["mean_length"], **smoothness(out, args.task)}
            if mode == "async":
                loop = s.get("loop", {})
                cell.update({k: loop.get(k) for k in ("latency_ms_p50", "starvation_events", "stale_dropped",
                                                        "overruns", "rtc_delay_steps_mean", "tick_hz")})
            res["cells"].append(cell)
            print(json.dumps(cell), flush=True)
            write_json(args.out, res)  # what is finished is kept
    finally:
        srv.terminate()
        srv.wait(30)
    res["seconds"] = round(time.time() - t_all, 1)
    write_json(args.out, res)
    plot(res, args.out.replace(".json", ".png"))


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    strats = sorted({c["strategy"] for c in res["cells"] if c["strategy"] != "sync"})
    for s in strats:
        cs = sorted((c for c in res["cells"] if c["strategy"] == s), key=lambda c: c["delay_steps"])
        x = [c["delay_steps"] for c in cs]
        axes[0].plot(x, [c["success_rate"] for c in cs], "o-", label=s)
        axes[1].plot(x, [c["jerk_at_switch_mean"] or 0 for c in cs], "o-", label=s)
    for c in res["cells"]:
        if c["strategy"] == "sync":
            axes[0].axhline(c["success_rate"], color="gray", ls="--", label="sync (pause)")
    axes[0].set(xlabel="delay (control steps at 20 Hz)", ylabel="success", title=f"{res['task']}, {res['episodes']} "
                f"episodes per point", ylim=(0, 1.05))
    axes[1].set(xlabel="delay (control steps)", ylabel="mean |delta a| at chunk switches", title="jerk at switches")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    os.replace(path + ".tmp.png", path)


if __name__ == "__main__":
    main()
