"""Serving benchmark: transport overhead, closed loop through the server, batching across 4 sim clients, fuzzing.

    python benchmarks/serving.py --policy runs/lift_tiny/policy --episodes 50 --rate 30 \
        --out benchmarks/results/serving.json
    # smoke (~2 min on 2 cores):
    python benchmarks/serving.py --episodes 1 --max-steps 40 --transport-requests 200 --rates 20,30 \
        --rate-episodes 1 --clients-seconds 8 --fuzz 2000 --out /tmp/serving_smoke.json

Servers run as `vla serve` subprocesses (as deployed), on loopback:
  (a) transport_ms = client round trip - server-reported model time (prefix + decode), two image_size px
      images, one client, on the default batching server (max_batch 8, max_wait 2 ms: a lone client does not
      wait for partners); also rtt - policy time (the whole infer_batch call: + image resize, detokenizing).
  (a0) the same round trips against an in-process server whose policy answers at once: the serving layer alone.
  (b) async ControlLoop at --rate Hz with a sim env over --episodes episodes: loop Hz, starvation events, p99
      |period - 1/rate|; then --rates on --rate-episodes episodes each: the highest rate the loop sustained
      (>= 90 % of it) with zero starvation (null when none did).
  (b') the same async loop with a ReplayRobot (recorded demo frames; no physics) over --replay-episodes
      episodes at --rate and --replay-rates: what serving sustains when the robot's step costs nothing.
  (c) 4 client processes, each with its own env, in sync mode (chunk, replan_every steps, chunk...) for
      --clients-seconds against a batching server (max_batch 8, max_wait 2 ms) and an unbatched one
      (max_batch 1): requests/s over all clients and p99 request latency.
  (d) --fuzz malformed messages (robot_bridge.fuzz) at the batching server; server_crashes counts server
      processes that died during the whole run (a live server must also answer a valid request after fuzzing).
Without --policy an untrained tiny policy is saved to a temporary directory ("policy": "untrained tiny").
Extra numbers (breakdowns, per-rate results) go to stdout and <out>.details.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time

import numpy as np

from common import VlaServe, command, demo_observation, pct, training_data, write_json

from robot_bridge import fuzz
from robot_bridge import protocol as P
from robot_bridge.client import PolicyClient

from transport_idle import HoldPolicy


def _obs(rng, size: int, meta: dict) -> dict:
    return {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in meta["cameras"]},
            "state": (rng.normal(size=meta["state_dim"]) * 0.1).astype(np.float32), "instruction": "lift the cube"}


def bench_transport(address: str, n: int, size: int, progress: bool, desc: str = "(a) transport") -> dict:
    """Round trips of one client: transport = rtt - model time (prefix + decode passes), and rtt - policy time
    (the whole policy.infer_batch call, which also resizes the images and detokenizes the chunk)."""
    from tqdm import tqdm

    rng = np.random.default_rng(0)
    with PolicyClient(address, timeout_ms=60_000) as c:
        meta = c.hello()
        obs = _obs(rng, size, meta)
        for _ in range(5):
            c.infer(obs)
        over, over_policy, rtt, server_extra, queue_ms, batch = [], [], [], [], [], []
        for i in tqdm(range(n), desc=desc, disable=not progress):
            t = c.infer(obs, step=i)["timing"]
            over.append(t["rtt_ms"] - t["model_ms"])
            over_policy.append(t["rtt_ms"] - t["infer_ms"])
            rtt.append(t["rtt_ms"])
            server_extra.append(t["server_ms"] - t["model_ms"])
            queue_ms.append(t["queue_ms"])
            batch.append(t["batch"])
    bytes_ = len(P.pack(P.make_request("infer", 1, **P.obs_fields(obs))))
    return {"transport_ms_p50": pct(over, 50), "transport_ms_p99": pct(over, 99),
            "transport_vs_policy_ms_p50": pct(over_policy, 50), "transport_vs_policy_ms_p99": pct(over_policy, 99),
            "rtt_ms_p50": pct(rtt, 50), "server_non_model_ms_p50": pct(server_extra, 50),
            "queue_ms_p50": pct(queue_ms, 50), "max_batch_seen": int(max(batch)), "request_bytes": bytes_, "n": n}


def bench_transport_floor(metadata: dict, n: int, size: int, progress: bool) -> dict:
    """(a0) The same round trips against an in-process PolicyServer whose policy answers at once."""
    from robot_bridge.serving.server import PolicyServer

    meta = {"cameras": {c: list(s) for c, s in metadata["cameras"].items()}, "state_dim": metadata["state_dim"],
            "action_dim": metadata["action_dim"], "chunk_size": metadata["chunk_size"]}
    with PolicyServer(HoldPolicy("none", 0.0, metadata=meta), bind="tcp://127.0.0.1:0") as srv:
        return bench_transport(srv.address, n, size, progress, desc="(a0) transport floor")


def run_loop(address: str, robot, rate: float, episodes: int, max_steps: int | None, seed0: int) -> dict:
    """Async ControlLoop episodes against `robot`; success_rate only for robots whose success means something."""
    from robot_bridge.control_loop import ControlLoop, LoopConfig
    from sim.remote_eval import aggregate_stats

    with PolicyClient(address, timeout_ms=5000, retries=1) as c:
        loop = ControlLoop(c, robot, LoopConfig(mode="async", rate_hz=rate))
        logs = [loop.run_episode(seed=seed0 + i, max_steps=max_steps) for i in range(episodes)]
        loop.close()
    out = aggregate_stats([lg.stats for lg in logs])
    if not isinstance(robot, ReplayRobot):
        out["success_rate"] = float(np.mean([lg.success for lg in logs]))
    return out


class ReplayRobot:
    """Recorded demo observations as the loop's robot: apply() moves to the next recorded frame at no cost.

    The loop, client, server and policy run for real; only the arm is replaced by a recording, so the loop rate
    is bounded by serving, not by robosuite's physics step and camera renders.
    Success has no meaning here (the actions do not move the recording).
    """

    def __init__(self, demos, steps: int):
        self.demos, self.steps_per_episode = demos, steps
        self.done, self.success, self._d, self._t = False, False, 0, 0

    @property
    def horizon(self) -> int:
        return self.steps_per_episode

    def reset(self, seed: int | None = None) -> dict:
        self._d, self._t, self.done = (seed or 0) % len(self.demos), 0, False
        return self.get_observation()

    def get_observation(self) -> dict:
        d = self.demos[self._d]
        return demo_observation(d, min(self._t, len(d) - 1))

    def apply(self, action: np.ndarray) -> None:
        self._t += 1
        self.done = self._t >= self.steps_per_episode


def _client_worker(idx, addresses, task, size, seconds, replan, barrier, results):
    """One sim client process: sync chunk loop against each address in turn, for `seconds` each."""
    from sim.env import VLAEnv

    env = None
    for addr in addresses:
        with PolicyClient(addr, timeout_ms=60_000) as c:
            meta = c.hello()
            if env is None:
                env = VLAEnv(task, image_size=size, cameras=tuple(meta["cameras"]))
            obs, _ = env.reset(seed=idx)
            barrier.wait()
            lat, t0 = [], time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                t1 = time.perf_counter()
                actions = c.infer(obs, episode_id=idx, step=len(lat))["actions"]
                lat.append((time.perf_counter() - t1) * 1e3)
                for a in actions[:replan]:
                    obs, _, term, trunc, _ = env.step(a)
                    if term or trunc:
                        obs, _ = env.reset(seed=idx + 1000 * len(lat))
                        break
            results.put((addr, idx, lat, t0, time.perf_counter()))
    env.close()


def bench_clients(addresses: dict, task: str, size: int, seconds: float, replan: int, n: int = 4) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_client_worker, args=(i, list(addresses.values()), task, size, seconds, replan,
                                                      barrier, results)) for i in range(n)]
    [p.start() for p in procs]
    rows = [results.get(timeout=600) for _ in range(n * len(addresses))]
    [p.join(60) for p in procs]
    out = {}
    for name, addr in addresses.items():
        mine = [r for r in rows if r[0] == addr]
        lat = np.concatenate([r[2] for r in mine])
        span = max(r[4] for r in mine) - min(r[3] for r in mine)
        out[name] = {"rps": len(lat) / span, "p99_ms": pct(lat, 99), "p50_ms": pct(lat, 50), "requests": len(lat)}
    return out


def bench_fuzz(address: str, n: int, spec: P.ObsSpec, progress: bool) -> dict:
    import msgpack
    import zmq
    from tqdm import tqdm

    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(address)
    replies, errors, sent = 0, 0, 0
    bar = tqdm(total=n, desc="(d) fuzz", disable=not progress)
    while sent < n:
        k = min(50, n - sent)
        for i in range(k):
            m = fuzz.malformed(spec, sent + i, rng)
            s.send_multipart(m) if isinstance(m, list) else s.send(m)
        for _ in range(k):
            if not s.poll(5000):
                break
            r = msgpack.unpackb(s.recv())
            replies += 1
            errors += r.get("kind") == "error"
        sent += k
        bar.update(k)
    bar.close()
    s.close(0)
    ctx.term()
    return {"fuzz_messages": sent, "fuzz_replies": replies, "fuzz_error_replies": errors}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", help="policy checkpoint directory (default: an untrained tiny policy)")
    ap.add_argument("--task", default="Lift")
    ap.add_argument("--episodes", type=int, default=50, help="(b) episodes at --rate")
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--rates", default="20,30,40,50", help="(b) rates tried for zero starvation")
    ap.add_argument("--rate-episodes", type=int, default=3)
    ap.add_argument("--max-steps", type=int, help="cap episode length (smoke runs)")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--replay-data", help="(b') demo file for the replay loop (default: the policy's training data)")
    ap.add_argument("--replay-episodes", type=int, default=50)
    ap.add_argument("--replay-steps", type=int, default=150, help="(b') loop ticks per replay episode")
    ap.add_argument("--replay-rates", default="30,40,50,60")
    ap.add_argument("--transport-requests", type=int, default=1000)
    ap.add_argument("--clients-seconds", type=float, default=30.0)
    ap.add_argument("--replan-every", type=int, help="(c) actions per chunk (default: the policy's n_action_steps)")
    ap.add_argument("--fuzz", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="server torch threads")
    ap.add_argument("--out", default="benchmarks/results/serving.json")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    progress = not args.no_progress
    tmp = tempfile.mkdtemp(prefix="serving_bench_")
    policy_dir, label = args.policy, args.policy
    if policy_dir is None:
        import torch

        from vla.policy import Policy

        torch.manual_seed(0)
        policy_dir, label = os.path.join(tmp, "untrained_tiny"), "untrained tiny"
        Policy.untrained("tiny").save_pretrained(policy_dir)
    details: dict = {"policy": label, "image_size": args.image_size, "task": args.task, "threads": args.threads}
    servers = {}
    try:
        print("starting servers ...", flush=True)
        servers["batched"] = VlaServe(policy_dir, args.threads, ["--max-batch", "8", "--max-wait-ms", "2"],
                                        f"{tmp}/b.log")
        servers["unbatched"] = VlaServe(policy_dir, args.threads, ["--max-batch", "1"], f"{tmp}/c.log")
        meta = servers["batched"].metadata

        # the default server (max_batch 8, max_wait 2 ms): a lone client must not pay the batching wait
        details["a"] = bench_transport(servers["batched"].address, args.transport_requests, args.image_size, progress)
        print("(a)", json.dumps(details["a"]), flush=True)
        details["a0"] = bench_transport_floor(meta, args.transport_requests, args.image_size, progress)
        print("(a0)", json.dumps(details["a0"]), flush=True)

        from sim.env import VLAEnv
        from sim.evaluate import EVAL_SEED_BASE

        from robot_bridge.control_loop import EnvRobot

        env = VLAEnv(args.task, image_size=args.image_size, cameras=tuple(meta["cameras"]))
        sim_robot = EnvRobot(env)
        details["b"] = run_loop(servers["batched"].address, sim_robot, args.rate, args.episodes, args.max_steps,
                                EVAL_SEED_BASE)
        print(f"(b) {args.rate} Hz", json.dumps(details["b"]), flush=True)
        sweep = {}
        for r in [float(x) for x in args.rates.split(",") if x]:
            sweep[r] = run_loop(servers["batched"].address, sim_robot, r, args.rate_episodes, args.max_steps,
                                EVAL_SEED_BASE)
            print(f"(b) sweep {r} Hz", json.dumps(sweep[r]), flush=True)
        env.close()
        details["rate_sweep"] = {str(k): v for k, v in sweep.items()}
        # a rate counts only if the loop actually ran at it (>= 90 %) and never starved
        zero = [r for r, v in sweep.items() if v["starvation_events"] == 0 and v["loop_hz"] >= 0.9 * r]

        replay_data = args.replay_data or training_data(policy_dir)
        if replay_data and os.path.exists(replay_data):
            from vla.formats import load_demos

            demos = load_demos(replay_data, split=None, tasks=[args.task])[:20]
            robot = ReplayRobot(demos, args.replay_steps)
            details["b_replay"] = run_loop(servers["batched"].address, robot, args.rate, args.replay_episodes, None, 0)
            print(f"(b') replay {args.rate} Hz", json.dumps(details["b_replay"]), flush=True)
            rsweep = {}
            for r in [float(x) for x in args.replay_rates.split(",") if x]:
                rsweep[r] = run_loop(servers["batched"].address, robot, r, args.rate_episodes, None, 0)
                print(f"(b') replay sweep {r} Hz", json.dumps(rsweep[r]), flush=True)
            details["replay_rate_sweep"] = {str(k): v for k, v in rsweep.items()}
            rzero = [r for r, v in rsweep.items() if v["starvation_events"] == 0 and v["loop_hz"] >= 0.9 * r]

        replan = args.replan_every or int(meta["n_action_steps"])
        details["c"] = bench_clients({"batched": servers["batched"].address, "unbatched": servers["unbatched"].address},
                                     args.task, args.image_size, args.clients_seconds, replan)
        print("(c)", json.dumps(details["c"]), flush=True)

        details["d"] = bench_fuzz(servers["batched"].address, args.fuzz, P.ObsSpec.from_metadata(meta), progress)
        with PolicyClient(servers["batched"].address, timeout_ms=30_000) as c:  # still serving after the fuzz
            c.infer(_obs(np.random.default_rng(1), args.image_size, meta))
        print("(d)", json.dumps(details["d"]), flush=True)
    finally:
        crashes = sum(not s.alive() for s in servers.values())
        codes = {k: s.stop() for k, s in servers.items()}
    details["server_exit_codes"] = codes
    result = {
        "transport_ms_p50": details["a"]["transport_ms_p50"],
        "transport_ms_p99": details["a"]["transport_ms_p99"],
        "transport_vs_policy_ms_p50": details["a"]["transport_vs_policy_ms_p50"],
        "transport_vs_policy_ms_p99": details["a"]["transport_vs_policy_ms_p99"],
        "transport_floor_ms_p50": details["a0"]["transport_ms_p50"],
        "transport_floor_ms_p99": details["a0"]["transport_ms_p99"],
        "loop_hz": details["b"]["loop_hz"],
        "tick_hz": details["b"]["tick_hz"],
        "starvation_events": details["b"]["starvation_events"],
        "jitter_ms_p99": details["b"]["jitter_ms_p99"],
        "max_hz_zero_starvation": max(zero) if zero else None,
        "replay": None if "b_replay" not in details else {
            "loop_hz": details["b_replay"]["loop_hz"], "starvation_events": details["b_replay"]["starvation_events"],
            "jitter_ms_p99": details["b_replay"]["jitter_ms_p99"], "episodes": args.replay_episodes,
            "max_hz_zero_starvation": max(rzero) if rzero else None},
        "fuzz_messages": details["d"]["fuzz_messages"],
        "server_crashes": crashes,
        "clients4": {"batched_rps": details["c"]["batched"]["rps"], "unbatched_rps": details["c"]["unbatched"]["rps"],
                     "batched_p99_ms": details["c"]["batched"]["p99_ms"],
                     "unbatched_p99_ms": details["c"]["unbatched"]["p99_ms"]},
        "command": command(__file__, argv),
        "policy": label,
    }
    write_json(args.out, result)
    write_json(os.path.splitext(args.out)[0] + ".details.json", details)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
