"""Why transport costs more with a real model: the same round trip after the server sat idle or computed.

    .venv/bin/python benchmarks/transport_idle.py --out benchmarks/results/transport_idle.json

An in-process PolicyServer (default config) whose policy returns a zero chunk after `--hold-ms` spent in one of
three ways: none (answers at once), sleep (the process idles, as every thread does while a model runs on a GPU),
torch (one thread runs matmuls with the GIL released, as a CPU model does). One client sends two --image-size px
images per request; overhead = round trip - the policy's own time. On a VM whose idle vCPUs halt, the path that
runs right after an idle or busy stretch (thread wake-ups, msgpack, socket calls) is several times slower than the
same path run back to back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from common import command, write_json

from robot_bridge.client import PolicyClient
from robot_bridge.serving.server import PolicyServer


class HoldPolicy:
    """A policy's metadata (default: two cameras, 8 x 7 chunks); infer_batch holds for hold_ms (mode none | sleep |
    torch), then answers zeros (H, D). What the serving layer costs around a model that takes hold_ms."""

    def __init__(self, mode: str, hold_ms: float, image_size: int = 128, metadata: dict | None = None):
        import torch

        self.mode, self.hold_s = mode, hold_ms / 1e3
        self.metadata = metadata or {
            "action_dim": 7, "chunk_size": 8, "state_dim": 9,
            "cameras": {"agentview": [image_size, image_size, 3], "wrist": [image_size, image_size, 3]}}
        self._a = torch.randn(256, 256)

    def reset(self) -> None:
        pass

    def infer_batch(self, obs_list):
        t0 = time.perf_counter()
        if self.mode == "sleep":
            time.sleep(self.hold_s)
        elif self.mode == "torch":
            while time.perf_counter() - t0 < self.hold_s:
                self._a @ self._a
        ms = (time.perf_counter() - t0) * 1e3
        a = np.zeros((self.metadata["chunk_size"], self.metadata["action_dim"]), np.float32)
        return [{"actions": a, "timing": {"model_ms": ms}} for _ in obs_list]


class TimedServer(PolicyServer):
    """PolicyServer that stamps when the worker starts building a reply and when the socket thread sends it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.done_at: list[float] = []
        self.sent_at: list[float] = []
        flush = self.router.flush  # the socket thread sends the replies workers posted

        def timed_flush() -> None:
            pending = not self.router._outbox.empty()
            flush()
            if pending:
                self.sent_at.append(time.perf_counter())

        self.router.flush = timed_flush

    def _done(self, *a, **kw):
        self.done_at.append(time.perf_counter())  # before the reply is built: the socket thread may send it
        super()._done(*a, **kw)                   # before this call returns


def measure(mode: str, hold_ms: float, n: int, size: int) -> dict:
    """overhead = round trip - the policy's time, split into: reply hand-off (worker done -> reply packed ->
    socket thread sent), reply tail (sent -> the client holds the decoded reply) and the rest (request side:
    client send -> socket thread -> worker thread starts the policy). Server and client share this process (and
    its clock)."""
    rng = np.random.default_rng(0)
    obs = {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in ("agentview", "wrist")},
           "state": np.zeros(9, np.float32), "instruction": "lift the cube"}
    with TimedServer(HoldPolicy(mode, hold_ms, size), bind="tcp://127.0.0.1:0") as srv:
        with PolicyClient(srv.address, timeout_ms=10_000) as c:
            c.hello()
            over, got = [], []
            for i in range(n + 5):
                t = c.infer(obs)["timing"]
                if i >= 5:
                    got.append(time.perf_counter())
                    over.append(t["rtt_ms"] - t["infer_ms"])
        done, sent = np.array(srv.done_at[-n:]), np.array(srv.sent_at[-n:])
    handoff = (sent - done) * 1e3
    tail = (np.array(got) - sent) * 1e3  # includes the client's unpack and its own timing code: an upper bound
    med = lambda x: float(np.median(x))  # noqa: E731
    return {"mode": mode, "hold_ms": hold_ms if mode != "none" else 0.0, "overhead_ms_p50": med(over),
            "overhead_ms_p99": float(np.percentile(over, 99)), "reply_handoff_ms_p50": med(handoff),
            "reply_tail_ms_p50": med(tail), "request_side_ms_p50": med(np.array(over) - handoff - tail), "n": n}


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hold-ms", type=float, default=65.0, help="the policy's hold (~ the tiny model's chunk time)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results/transport_idle.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [measure(m, args.hold_ms, args.requests, args.image_size) for m in ("none", "sleep", "torch")]
    for r in rows:
        print(json.dumps(r))
    out = {"rows": rows,
           "command": command(__file__, argv)}
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
