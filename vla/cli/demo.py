"""`make demo`: the main job on the embedded defaults, end to end on one CPU machine.

1. collect scripted-expert demos (if absent)           -> data/demo/lift.hdf5
2. train the tiny preset on them (a short run)          -> demo_out/train (loss curve)
3. serve the shipped policy over ZeroMQ on loopback     (vla/pretrained/lift_tiny, fp16; reproduced by the
                                                          command in its config.json "reproduce" field)
4. evaluate it in MuJoCo through the control loop       (sync mode for exact numbers, then the async 20 Hz loop),
   then its Fast-dVLA student                           (vla/pretrained/lift_tiny_fast: distilled, block-causal,
                                                          pipelined decoding; sync mode)
5. write demo_out/REPORT.md with success rate, decode latency, plots and a video
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

VLA_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the vla package (this file is vla/cli/demo.py)
ROOT = os.path.dirname(VLA_DIR)  # the repository
PRETRAINED = os.path.join(VLA_DIR, "pretrained", "lift_tiny")
FAST = os.path.join(VLA_DIR, "pretrained", "lift_tiny_fast")


def _say(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vla-demo")
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--demos", type=int, default=20)
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--async-episodes", type=int, default=3)
    ap.add_argument("--policy", default=PRETRAINED, help="policy to serve and evaluate")
    ap.add_argument("--task", default="Lift")
    ap.add_argument("--fast-policy", default=FAST,
                    help="its Fast-dVLA student (block-causal, pipelined decoding), also evaluated; '' to skip")
    args = ap.parse_args(argv)
    t_start = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    import torch

    torch.set_num_threads(1)  # the env renders on one core, the policy server thread uses the other

    # 1. demonstrations -------------------------------------------------------------------------------------
    from sim.collect import collect

    data = os.path.join(ROOT, "data", "demo", "lift.hdf5")
    if not os.path.exists(data):
        _say(f"collecting {args.demos} Lift demos with the scripted expert -> {data}")
        res = collect("Lift", episodes=args.demos, out=data, image_size=128, noise=0.1)
        collect_info = {"demos": res.demos, "demos_per_min": round(res.demos_per_min, 1)}
    else:
        _say(f"demos found: {data}")
        collect_info = {"demos": "existing file"}

    # 2. a short training run of the tiny preset ---------------------------------------------------------
    from vla.config import DataConfig, TrainConfig
    from vla.train import train

    _say(f"training the tiny preset for {args.train_steps} steps (a demonstration of the loop; the served policy "
         "below was trained longer with the command in its config.json)")
    torch.set_num_threads(2)
    tcfg = TrainConfig.build(model="tiny", data=DataConfig(paths=(data,)), out_dir=os.path.join(out, "train"),
                             steps=args.train_steps, batch_size=32, optim={"lr": 5e-4, "warmup_steps": 20},
                             log_every=10, val_every=50, save_every=0)
    t0 = time.time()
    train(tcfg)
    train_s = time.time() - t0
    torch.set_num_threads(1)

    # 3. serve the shipped policy -------------------------------------------------------------------------
    from sim.remote_eval import evaluate_server
    from robot_bridge.serving.server import PolicyServer
    from vla.policy import Policy

    _say(f"serving {os.path.relpath(args.policy, ROOT)} on ZeroMQ (loopback)")
    policy = Policy.from_pretrained(args.policy)
    server = PolicyServer(policy, bind="tcp://127.0.0.1:0", max_batch=4).start()
    try:
        # 4. evaluation through the server and the control loop -----------------------------------------
        _say(f"evaluating on {args.task}: {args.episodes} episodes, synchronous control loop (exact, reproducible)")
        sync = evaluate_server(server.address, args.task, episodes=args.episodes, videos=2,
                               out_dir=os.path.join(out, "eval_sync"), mode="sync")
        _say(f"{args.async_episodes} more episodes with the asynchronous 20 Hz loop (as a robot would run it)")
        asy = evaluate_server(server.address, args.task, episodes=args.async_episodes, videos=0,
                              out_dir=os.path.join(out, "eval_async"), mode="async", rate_hz=20.0,
                              seed_base=2_000_000)
        model_ms_p50 = server_model_ms_p50(server.request_log)
    finally:
        server.stop()
    fast = None
    if args.fast_policy and os.path.isdir(args.fast_policy):
        _say(f"its Fast-dVLA student {os.path.relpath(args.fast_policy, ROOT)} (pipelined decoding): "
             f"{args.episodes} synchronous episodes through the server")
        fast_policy = Policy.from_pretrained(args.fast_policy)
        with PolicyServer(fast_policy, bind="tcp://127.0.0.1:0", max_batch=4) as fsrv:
            fs = evaluate_server(fsrv.address, args.task, episodes=args.episodes, videos=0,
                                 out_dir=os.path.join(out, "eval_fast"), mode="sync")
        fast = {"policy": os.path.relpath(args.fast_policy, ROOT), "success_rate_sync": fs["success_rate"],
                "episodes_sync": fs["episodes"], "decode_latency_ms": measure_latency(fast_policy, args.task)}

    # 5. report ------------------------------------------------------------------------------------------
    from vla.atomic import write_json_atomic

    lat_info = measure_latency(policy, args.task)
    report = {
        "task": args.task,
        "policy": os.path.relpath(args.policy, ROOT),
        "success_rate_sync": sync["success_rate"],
        "episodes_sync": sync["episodes"],
        "success_rate_async": asy["success_rate"],
        "async_loop": asy.get("loop"),
        "decode_latency_ms": lat_info,
        "server_model_ms_p50": model_ms_p50,
        "fast": fast,
        "collect": collect_info,
        "train": {"steps": args.train_steps, "seconds": round(train_s, 1)},
        "total_seconds": round(time.time() - t_start, 1),
    }
    write_json_atomic(os.path.join(out, "report.json"), report)
    _write_markdown(out, report)
    _say("done")
    print(f"success rate ({args.task}, {sync['episodes']} episodes through the ZeroMQ server): "
          f"{sync['success_rate']:.0%}")
    print(f"chunk decode latency p50: {lat_info['latency_ms_p50']:.1f} ms "
          f"(p99 {lat_info['latency_ms_p99']:.1f} ms, {lat_info['nfe']:.0f} passes, decoder {lat_info['decoder']})")
    if fast:
        fl = fast["decode_latency_ms"]
        print(f"Fast-dVLA student: {fast['success_rate_sync']:.0%} success, chunk p50 {fl['latency_ms_p50']:.1f} ms "
              f"({fl['nfe']:.1f} passes, decoder {fl['decoder']}; "
              f"{lat_info['latency_ms_p50'] / fl['latency_ms_p50']:.2f}x the teacher's speed)")
    print(f"report: {os.path.join(out, 'REPORT.md')}  (total {report['total_seconds']:.0f} s)")
    return 0


def server_model_ms_p50(request_log) -> float | None:
    """Median model time (ms) over a PolicyServer's request_log entries; None when it logged no request."""
    import numpy as np

    ms = [e["model_ms"] for e in request_log]
    return float(np.median(ms)) if ms else None


def measure_latency(policy, task: str, n: int = 30) -> dict:
    """Chunk latency (policy.infer, batch 1) on observations from fresh episodes of the task."""
    import numpy as np

    from sim.env import VLAEnv

    env = VLAEnv(task, image_size=128, cameras=policy.cfg.cameras)
    obs = [env.reset(seed=3_000_000 + i)[0] for i in range(n)]
    env.close()
    policy.infer(obs[0])
    ms, nfe = [], []
    for o in obs:
        t0 = time.perf_counter()
        r = policy.infer(o)
        ms.append((time.perf_counter() - t0) * 1e3)
        nfe.append(r["timing"]["nfe"])
    return {"latency_ms_p50": float(np.percentile(ms, 50)), "latency_ms_p99": float(np.percentile(ms, 99)),
            "nfe": float(np.mean(nfe)), "decoder": policy.decode_cfg.decoder, "n": n}


def _write_markdown(out: str, r: dict) -> None:
    vids = (sorted(os.listdir(os.path.join(out, "eval_sync", "videos")))
            if os.path.isdir(os.path.join(out, "eval_sync", "videos")) else [])
    loop = r.get("async_loop") or {}
    lines = [
        "# vla-stack demo report",
        "",
        f"- policy: `{r['policy']}` served over ZeroMQ on loopback, evaluated in MuJoCo (robosuite) "
        "through the control loop",
        f"- **{r['task']}: {r['success_rate_sync']:.0%} success** over {r['episodes_sync']} episodes "
        "(sync mode, fixed seeds)",
        f"- async 20 Hz loop: {r['success_rate_async']:.0%} success; loop {loop.get('loop_hz', 0) or 0:.1f} Hz, "
        f"starvation events {loop.get('starvation_events')}, jitter p99 {loop.get('jitter_ms_p99') or 0:.1f} ms",
        f"- chunk decode latency (batch 1, 1 thread): p50 {r['decode_latency_ms']['latency_ms_p50']:.1f} ms, "
        f"p99 {r['decode_latency_ms']['latency_ms_p99']:.1f} ms, {r['decode_latency_ms']['nfe']:.0f} forward passes",
        f"- server model time per request: p50 {r['server_model_ms_p50']:.1f} ms"
        if r["server_model_ms_p50"] is not None else "- server model time: no requests logged",
        _fast_line(r),
        f"- short training run: {r['train']['steps']} steps in {r['train']['seconds']:.0f} s (loss curve below)",
        f"- total demo time: {r['total_seconds']:.0f} s",
        "",
        "![training loss](train/loss.png)",
        "",
        "Videos (agentview | wrist): " + ", ".join(f"[{v}](eval_sync/videos/{v})" for v in vids),
        "",
    ]
    _atomic_text(os.path.join(out, "REPORT.md"), "\n".join(lines))


def _fast_line(r: dict) -> str:
    f = r.get("fast")
    if not f:
        return "- Fast-dVLA student: not evaluated (no --fast-policy)"
    fl, tl = f["decode_latency_ms"], r["decode_latency_ms"]
    return (f"- Fast-dVLA student `{f['policy']}` (block-causal, distilled, decoder {fl['decoder']}): "
            f"**{f['success_rate_sync']:.0%}** over {f['episodes_sync']} sync episodes; chunk p50 "
            f"{fl['latency_ms_p50']:.1f} ms, {fl['nfe']:.1f} passes "
            f"({tl['latency_ms_p50'] / fl['latency_ms_p50']:.2f}x "
            "the teacher's speed on this machine)")


def _atomic_text(path: str, text: str) -> None:
    from vla.atomic import write_atomic

    def write(p):
        with open(p, "w") as f:
            f.write(text)

    write_atomic(path, write)


if __name__ == "__main__":
    sys.exit(main())
