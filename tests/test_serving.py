"""PolicyServer + PolicyClient over real loopback sockets with a real (untrained tiny) model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from bridge_helpers import SlowPolicy, free_port, make_obs

from robot_bridge import protocol as P
from robot_bridge.client import PolicyClient
from robot_bridge.security import is_loopback
from robot_bridge.serving.server import PolicyServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def policy():
    from vla.policy import Policy

    return Policy.untrained("tiny")


def test_four_concurrent_clients_are_batched_and_get_their_own_results(policy):
    rng = np.random.default_rng(0)
    instr = ["lift the cube", "pick up the red cube", "stack the red cube on the green cube", "put the can in the bin"]
    obs = [[make_obs(rng, size=64, instruction=instr[c]) for _ in range(3)] for c in range(4)]
    expected = [[policy.infer(o)["actions"] for o in per] for per in obs]  # unbatched, argmax decoding
    srv = PolicyServer(policy, bind="tcp://127.0.0.1:0", max_batch=8, max_wait_ms=20.0).start()
    got: dict = {}
    barrier = threading.Barrier(4)

    def run(c):
        with PolicyClient(srv.address, timeout_ms=20_000, retries=0) as cl:
            barrier.wait()
            got[c] = [cl.infer(o, episode_id=c, step=i) for i, o in enumerate(obs[c])]

    threads = [threading.Thread(target=run, args=(c,)) for c in range(4)]
    try:
        [t.start() for t in threads]
        [t.join(60) for t in threads]
    finally:
        srv.stop()
    assert max(srv.batch_sizes) > 1, srv.batch_sizes
    assert sum(srv.batch_sizes) == 12
    # each client gets its own chunk: equal to its unbatched chunk up to float rounding (a batched matmul may round
    # differently, and a near tie in the confidence order then reveals a different token: measured, 1 chunk of 12
    # with 3 of 56 tokens), and far from every other request's chunk
    flips = 0
    for c in range(4):
        assert len(got[c]) == 3
        for i, out in enumerate(got[c]):
            assert out["episode_id"] == c and out["step"] == i
            own = int((out["actions"] != expected[c][i]).sum())
            flips += own > 0
            others = min(int((out["actions"] != expected[k][j]).sum()) for k in range(4) for j in range(3)
                         if (k, j) != (c, i))
            assert own <= 8 < others, (c, i, own, others)
    assert flips <= 2
    batched = [e for e in srv.request_log if e["batch"] > 1]
    assert batched and all(e["model_ms"] > 0 and e["server_ms"] >= e["queue_ms"] for e in srv.request_log)


def test_timeout_is_bounded_and_a_late_reply_is_never_used(policy):
    slow = SlowPolicy(policy, [0.8, 0.0])
    srv = PolicyServer(slow, bind="tcp://127.0.0.1:0").start()
    rng = np.random.default_rng(1)
    o1, o2 = make_obs(rng), make_obs(rng, instruction="pick up the blue cube")
    try:
        with PolicyClient(srv.address, timeout_ms=200, retries=1) as c:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                c.infer(o1, step=1)
            assert time.monotonic() - t0 < 4.0  # bounded: 2 tries x 200 ms, never the 10 s of a stuck call
            assert c.stats["timeouts"] == 2 and c.stats["reconnects"] == 2
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):  # an absolute deadline cuts the per-try timeout short
                c.infer(o1, step=1, timeout_ms=5000, deadline=time.monotonic() + 0.1)
            assert time.monotonic() - t0 < 2.5  # cut short: well before the 5 s per-try timeout
            time.sleep(1.0)  # the late replies to the step-1 requests have been sent by now
            out = c.infer(o2, step=2, timeout_ms=10_000)
        assert out["step"] == 2
        assert np.array_equal(out["actions"], policy.infer(o2)["actions"])  # o2's chunk, not the late o1 chunk
        assert not np.array_equal(out["actions"], policy.infer(o1)["actions"])
    finally:
        srv.stop()


def test_model_failure_in_a_batch_only_fails_that_request(policy):
    class Picky(SlowPolicy):
        def infer_batch(self, obs_list):
            if any(o["instruction"] == "explode" for o in obs_list):
                raise RuntimeError("model blew up")
            return super().infer_batch(obs_list)

    srv = PolicyServer(Picky(policy, [0.3, 0.0]), bind="tcp://127.0.0.1:0", max_batch=8, max_wait_ms=0).start()
    rng = np.random.default_rng(2)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(srv.address)
    try:
        good, bad = make_obs(rng), make_obs(rng, instruction="explode")
        s.send(P.pack(P.make_request("infer", 1, **P.obs_fields(good))))  # occupies the worker 0.3 s
        time.sleep(0.1)
        s.send(P.pack(P.make_request("infer", 2, **P.obs_fields(bad))))
        s.send(P.pack(P.make_request("infer", 3, **P.obs_fields(good))))
        replies = {}
        for _ in range(3):
            assert s.poll(10_000)
            r = msgpack.unpackb(s.recv())
            replies[r["id"]] = r
    finally:
        s.close(0)
        ctx.term()
        srv.stop()
    assert max(srv.batch_sizes) >= 2  # the failing request shared its batch with a good one
    assert replies[1]["kind"] == "actions" and replies[3]["kind"] == "actions"
    assert replies[2]["kind"] == "error" and replies[2]["code"] == P.ErrorCode.INFERENCE_FAILED
    assert "model blew up" in replies[2]["message"]


def test_overload_and_graceful_stop_answer_every_request(policy):
    srv = PolicyServer(SlowPolicy(policy, [0.5]), bind="tcp://127.0.0.1:0", max_batch=1, max_queue=2).start()
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(srv.address)
    obs = P.obs_fields(make_obs(np.random.default_rng(3)))
    try:
        for i in range(5):
            s.send(P.pack(P.make_request("infer", i, **obs)))
        time.sleep(0.2)
        threading.Thread(target=srv.stop).start()
        codes = []
        for _ in range(5):
            assert s.poll(10_000), "a request was left unanswered"
            r = msgpack.unpackb(s.recv())
            codes.append(r.get("code", r["kind"]))
    finally:
        s.close(0)
        ctx.term()
        srv.stop()
    assert codes.count("actions") >= 1  # the batch in flight completes
    assert P.ErrorCode.OVERLOADED in codes  # queue of 2: the rest were refused at once
    assert P.ErrorCode.SHUTTING_DOWN in codes  # queued when stop() came


def test_timing_log_and_loopback_default(policy, tmp_path):
    log = tmp_path / "timing.jsonl"
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://[::1]:5") and not is_loopback("tcp://*:5555")
    assert PolicyServer(policy).config.bind.startswith("tcp://127.0.0.1:")
    srv = PolicyServer(policy, bind="tcp://127.0.0.1:0", timing_log=str(log)).start()
    try:
        with PolicyClient(srv.address, timeout_ms=10_000) as c:
            for step in range(3):
                out = c.infer(make_obs(np.random.default_rng(step)), episode_id=7, step=step)
                assert out["timing"]["rtt_ms"] >= out["timing"]["server_ms"] >= out["timing"]["model_ms"] > 0
            c.reset()
    finally:
        srv.stop()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2] and all(x["episode_id"] == 7 for x in lines)
    assert all({"queue_ms", "model_ms", "server_ms", "batch", "nfe"} <= set(x) for x in lines)
    # what `make demo` reports from the same in-memory log
    from vla.cli.demo import server_model_ms_p50

    assert server_model_ms_p50(srv.request_log) == pytest.approx(float(np.median([x["model_ms"] for x in lines])))
    assert server_model_ms_p50([]) is None


def test_vla_serve_cli_serves_and_stops_on_sigint(policy, tmp_path):
    pdir = tmp_path / "policy"
    policy.save_pretrained(str(pdir))
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "vla.cli", "serve", "--policy", str(pdir), "--bind", addr,
                             "--decoder", "parallel", "--threads", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        obs = make_obs(np.random.default_rng(4))
        with PolicyClient(addr, timeout_ms=2000, retries=30) as c:  # retries cover the server's start-up
            meta = c.hello()
            out = c.infer(obs, timeout_ms=20_000)
        assert meta["model"] == tmp_path.name and meta["chunk_size"] == 8
        assert np.array_equal(out["actions"], policy.infer(obs)["actions"])
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(20)
        text = proc.stdout.read()
        assert rc == 0, text
        assert "server stopped" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_lone_client_never_waits_for_batch_partners_but_two_clients_are_batched(policy):
    """max_wait is spent only while a recently active client is missing from the batch."""
    rng = np.random.default_rng(1)
    obs = make_obs(rng, size=64)
    srv = PolicyServer(policy, bind="tcp://127.0.0.1:0", max_batch=8, max_wait_ms=500.0, batch_window_s=30.0).start()
    try:
        with PolicyClient(srv.address, timeout_ms=20_000, retries=0) as cl:
            for i in range(4):
                cl.infer(obs, step=i)
        assert srv.batcher.waits == 0 and list(srv.batch_sizes) == [1, 1, 1, 1]

        # two clients: each request now waits (up to 500 ms) for the other active client, so they share batches
        barrier = threading.Barrier(2)

        def run(c):
            with PolicyClient(srv.address, timeout_ms=20_000, retries=0) as cl:
                for i in range(3):
                    barrier.wait()
                    cl.infer(obs, episode_id=c, step=i)

        threads = [threading.Thread(target=run, args=(c,)) for c in range(2)]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
    finally:
        srv.stop()
    later = list(srv.batch_sizes)[4:]
    assert sum(later) == 6 and later.count(2) >= 2, later
    assert srv.batcher.waits >= 2


def test_a_state_that_overflows_float32_is_refused_before_any_batch(policy):
    """float64 1e300 is finite, but inf in the model's float32: refused up front with the field named, so it never
    fails inside a batch (where every request of that batch would be re-run)."""
    srv = PolicyServer(policy, bind="tcp://127.0.0.1:0").start()
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(srv.address)
    try:
        o = make_obs(np.random.default_rng(5))
        fields = P.obs_fields(o)
        fields["state"] = P.encode_array(np.full(9, 1e300, np.float64))
        s.send(P.pack(P.make_request("infer", 1, **fields)))
        assert s.poll(10_000)
        r = msgpack.unpackb(s.recv())
    finally:
        s.close(0)
        ctx.term()
        srv.stop()
    assert r["kind"] == "error" and r["code"] == P.ErrorCode.BAD_FIELD
    assert r["message"].startswith("state: beyond float32's range")
    assert srv.batch_sizes == [] and srv.batcher.failures == 0


def test_a_failing_batch_is_retried_request_by_request_once_per_client():
    """An attacker whose requests fail inside the model: the first failing batch is re-run one by one (the honest
    requests still get answers); after that the attacker's requests run apart, and the honest batch runs once."""
    from robot_bridge.serving.batcher import Batcher, Job

    calls: list[int] = []

    class Picky:
        def infer_batch(self, obs_list):
            calls.append(len(obs_list))
            if any(o == "poison" for o in obs_list):
                raise RuntimeError("model blew up")
            return [{"actions": np.zeros((8, 7), np.float32), "timing": {}} for _ in obs_list]

    b = Batcher(Picky())
    done: list = []

    def job(obs, client):
        return Job(kind="infer", obs=obs, client=client, on_done=lambda r, e, c=client: done.append((c, e is None)))

    b._infer([job("ok", "A"), job("poison", "B"), job("ok", "C")])
    assert calls == [3, 1, 1, 1] and b.retried_batches == 1
    assert sorted(done) == [("A", True), ("B", False), ("C", True)]
    calls.clear()
    done.clear()
    for _ in range(3):  # the attacker keeps sending: it is a suspect now
        b._infer([job("ok", "A"), job("poison", "B"), job("ok", "C")])
    assert calls == [2, 1] * 3 and b.retried_batches == 1  # no more re-runs for the honest clients
    assert done[:2] == [("A", True), ("C", True)] and done[2] == ("B", False)  # honest answers first
