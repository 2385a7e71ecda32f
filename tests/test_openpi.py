"""openpi websocket compatibility, tested with openpi's own client (PyPI openpi-client 0.1.2)."""

from __future__ import annotations

import threading
import time
import urllib.request

import numpy as np
import pytest
from bridge_helpers import SlowPolicy, make_obs
from openpi_client import msgpack_numpy
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from robot_bridge.serving.server import PolicyServer


@pytest.fixture(scope="module")
def policy():
    from vla.policy import Policy

    return Policy.untrained("tiny")


@pytest.fixture(scope="module")
def server(policy):
    srv = PolicyServer(policy, bind="tcp://127.0.0.1:0", openpi_port=0).start()
    yield srv
    srv.stop()


def _flat(obs: dict) -> dict:
    """Our observation in openpi's LIBERO-style flat keys."""
    return {"observation/image": obs["images"]["agentview"], "observation/wrist_image": obs["images"]["wrist"],
            "observation/state": obs["state"], "prompt": obs["instruction"]}


def test_websocket_client_policy_gets_metadata_and_correct_actions(server, policy):
    client = WebsocketClientPolicy(host="127.0.0.1", port=server.openpi.port)
    meta = client.get_server_metadata()
    assert meta["action_dim"] == 7 and meta["chunk_size"] == 8 and set(meta["cameras"]) == {"agentview", "wrist"}
    rng = np.random.default_rng(0)
    obs = make_obs(rng, size=96, instruction="pick up the red cube")
    out = client.infer(_flat(obs))
    assert isinstance(out["actions"], np.ndarray) and out["actions"].shape == (8, 7)
    np.testing.assert_array_equal(out["actions"], policy.infer(obs)["actions"])
    assert out["server_timing"]["infer_ms"] > 0 and "queue_ms" in out["server_timing"]
    # our own schema on the same connection, with "prompt" for the instruction; CHW images are transposed
    ours = {"images": {c: np.ascontiguousarray(im.transpose(2, 0, 1)) for c, im in obs["images"].items()},
            "state": obs["state"].astype(np.float64), "prompt": obs["instruction"]}
    np.testing.assert_array_equal(client.infer(ours)["actions"], policy.infer(obs)["actions"])
    out2 = client.infer(_flat(obs))
    assert "prev_total_ms" in out2["server_timing"]


def test_action_chunk_broker_steps_through_chunks(server, policy):
    broker = ActionChunkBroker(WebsocketClientPolicy(host="127.0.0.1", port=server.openpi.port), action_horizon=4)
    rng = np.random.default_rng(1)
    observations = [make_obs(rng) for _ in range(8)]
    before = len(server.batch_sizes)
    got = [broker.infer(_flat(o))["actions"] for o in observations]
    assert len(server.batch_sizes) - before == 2  # two chunks for eight steps
    first, second = policy.infer(observations[0])["actions"], policy.infer(observations[4])["actions"]
    for i, a in enumerate(got):
        assert a.shape == (7,)
        np.testing.assert_array_equal(a, (first if i < 4 else second)[i % 4])
    broker.reset()


def test_errors_are_a_text_frame_then_close_1011(server):
    client = WebsocketClientPolicy(host="127.0.0.1", port=server.openpi.port)
    obs = _flat(make_obs(np.random.default_rng(2)))
    del obs["observation/state"]
    with pytest.raises(RuntimeError, match="missing_field: observation/state or state"):
        client.infer(obs)
    with connect(f"ws://127.0.0.1:{server.openpi.port}", max_size=None) as ws:
        ws.recv()  # metadata
        ws.send(msgpack_numpy.packb({**obs, "observation/state": np.zeros(9, np.int64)}))
        text = ws.recv()
        assert isinstance(text, str) and text.startswith("error bad_field: observation/state")
        with pytest.raises(ConnectionClosed) as ei:
            ws.recv()
        assert ei.value.rcvd.code == 1011
    with connect(f"ws://127.0.0.1:{server.openpi.port}") as ws:
        ws.recv()
        ws.send(b"\xc1 not msgpack")
        assert ws.recv().startswith("error bad_message")
    assert server._thread.is_alive()  # the server is fine, and the next client is served
    assert WebsocketClientPolicy(host="127.0.0.1", port=server.openpi.port).infer(
        _flat(make_obs(np.random.default_rng(3))))["actions"].shape == (8, 7)


def test_ctrl_maps_are_acknowledged_not_run(server):
    with connect(f"ws://127.0.0.1:{server.openpi.port}") as ws:
        ws.recv()
        before = len(server.batch_sizes)
        ws.send(msgpack_numpy.packb({"__ctrl__": "reset"}))
        reply = msgpack_numpy.unpackb(ws.recv())
        assert reply == {"__ctrl__": "reset", "ok": True}
        assert len(server.batch_sizes) == before


def test_healthz(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.openpi.port}/healthz", timeout=5) as r:
        assert r.status == 200 and r.read() == b"OK\n"


def test_pings_are_answered_while_the_model_runs(policy):
    srv = PolicyServer(SlowPolicy(policy, [1.5]), bind="tcp://127.0.0.1:0", openpi_port=0).start()
    try:
        with connect(f"ws://127.0.0.1:{srv.openpi.port}", max_size=None) as ws:
            ws.recv()
            ws.send(msgpack_numpy.packb(_flat(make_obs(np.random.default_rng(4)))))
            time.sleep(0.2)  # inference (1.5 s) is under way
            t0 = time.monotonic()
            assert ws.ping().wait(1.0), "no pong while the model ran: the event loop is blocked"
            assert time.monotonic() - t0 < 1.0
            reply = msgpack_numpy.unpackb(ws.recv(timeout=10))
            assert reply["actions"].shape == (8, 7)
    finally:
        srv.stop()


def test_zmq_and_websocket_clients_share_the_batcher(server, policy):
    from robot_bridge.client import PolicyClient

    rng = np.random.default_rng(5)
    obs = [make_obs(rng) for _ in range(2)]
    out = {}

    def ws_side():
        out["ws"] = WebsocketClientPolicy(host="127.0.0.1", port=server.openpi.port).infer(_flat(obs[0]))["actions"]

    th = threading.Thread(target=ws_side)
    th.start()
    with PolicyClient(server.address, timeout_ms=10_000) as c:
        out["zmq"] = c.infer(obs[1])["actions"]
    th.join(30)
    np.testing.assert_array_equal(out["ws"], policy.infer(obs[0])["actions"])
    np.testing.assert_array_equal(out["zmq"], policy.infer(obs[1])["actions"])


def test_request_bytes_in_flight_are_capped_over_all_connections(policy):
    """Each request is within the per-message limit, but the server holds at most max_inflight_bytes of requests at
    once: with the model busy, a third connection's request is refused OVERLOADED (and the server stays up)."""
    from robot_bridge.serving.openpi import OpenPIServer

    one = len(msgpack_numpy.packb(_flat(make_obs(np.random.default_rng(0)))))
    srv = PolicyServer(SlowPolicy(policy, [1.0, 1.0, 0.0]), bind="tcp://127.0.0.1:0", openpi_port=0, max_batch=1,
                       openpi_max_inflight_bytes=int(2.5 * one)).start()
    try:
        assert isinstance(srv.openpi, OpenPIServer) and srv.openpi.max_inflight_bytes == int(2.5 * one)
        socks = [connect(f"ws://127.0.0.1:{srv.openpi.port}", max_size=None) for _ in range(3)]
        for i, ws in enumerate(socks):
            ws.recv()  # metadata
            ws.send(msgpack_numpy.packb(_flat(make_obs(np.random.default_rng(i)))))
            time.sleep(0.1)
        third = socks[2].recv(timeout=10)
        assert isinstance(third, str) and third.startswith("error overloaded:") and "in flight" in third
        for ws in socks[:2]:  # the two within the cap are answered
            assert msgpack_numpy.unpackb(ws.recv(timeout=20))["actions"].shape == (8, 7)
        for ws in socks:
            ws.close()
        assert srv.openpi.inflight_bytes == 0 and srv.openpi.counts["overloaded"] == 1
        c = WebsocketClientPolicy(host="127.0.0.1", port=srv.openpi.port)  # later requests are served again
        assert c.infer(_flat(make_obs(np.random.default_rng(9))))["actions"].shape == (8, 7)
    finally:
        srv.stop()
