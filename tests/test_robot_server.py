"""RobotServer against a real robosuite env (the `sim` robot, no cameras): watchdog timing, stale and superseded
commands, e-stop/release, malformed messages, state publication, the bind policy."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq
from robot_helpers import sim_env_no_render, stream

from robot_bridge import protocol as P
from robot_bridge import robot_protocol as RP
from robot_bridge.robot_client import RobotClient
from robot_bridge.robot_server import RobotServer, RobotServerConfig
from sim.robot import SimRobot

WATCHDOG_MS, PERIOD_MS = 100.0, 50.0


@pytest.fixture(scope="module")
def env():
    e = sim_env_no_render()
    yield e
    e.close()


@pytest.fixture
def rig(env):
    robot = SimRobot(env=env)
    srv = RobotServer(robot, bind="tcp://127.0.0.1:0", watchdog_ms=WATCHDOG_MS, rate_hz=50).start()
    client = RobotClient(srv.address, timeout_ms=3000)
    client.hello()
    client.reset(seed=0)
    yield srv, robot, client
    client.close()
    srv.stop()


def _action(x: float = 0.1) -> np.ndarray:
    a = np.zeros(7, np.float32)
    a[0] = x
    return a


def test_watchdog_holds_within_watchdog_plus_one_period(rig):
    srv, robot, client = rig
    last = stream(client, _action(), steps=10, rate_hz=1e3 / PERIOD_MS)  # 20 Hz: gaps of 50 ms never trip it
    st = client.wait_state(lambda s: s["mode"] == "holding", 2.0)
    assert st is not None and st["hold_reason"] == "watchdog"
    w = st["watchdog"]
    n = srv.counts["applied"]  # a late tick can put two commands in one batch: the older is superseded
    assert w["events"] == 1 and n + srv.counts["dropped_superseded"] == 10 and robot.steps == n >= 8
    assert WATCHDOG_MS <= w["last_reaction_ms"] <= WATCHDOG_MS + PERIOD_MS, w
    # wall clock, from the server's receipt of the last command (the client's send time would add the transport)
    t_recv = srv.last_applied["t_recv"]
    assert last < t_recv and 0 < (w["t_hold"] - t_recv) * 1e3 <= WATCHDOG_MS + PERIOD_MS
    # the next valid command resumes
    r = client.command(_action())
    assert r["kind"] == "applied" and r["status"]["mode"] == "active" and robot.steps == n + 1


def test_stale_and_future_commands_are_dropped(rig):
    srv, robot, client = rig
    client.send_command(_action(), t_sent=time.time() - 0.5, ack=True)
    r = client._await(client._last_command_id, time.monotonic() + 3)
    assert r["kind"] == "dropped" and r["reason"] == "stale"
    client.send_command(_action(), t_sent=time.time() + 1.0, ack=True)
    r = client._await(client._last_command_id, time.monotonic() + 3)
    assert r["kind"] == "dropped" and r["reason"] == "future"
    assert robot.steps == 0 and srv.counts["dropped_stale"] == 1 and srv.counts["dropped_future"] == 1
    assert client.command(_action())["kind"] == "applied" and robot.steps == 1


def test_latest_command_wins(rig):
    srv, robot, client = rig
    # a reset keeps the server busy while the burst arrives: the burst lands in at most two batches
    rid = client._new_id()
    client._sock.send(P.pack(RP.request("reset", rid, seed=1)))
    seqs = [client.send_command(_action(0.01 * i)) for i in range(1, 7)]
    assert client._await(rid, time.monotonic() + 5)["kind"] == "observation"
    client.status()  # processed after the burst: the server has seen every command
    applied = [e["seq"] for e in srv.applied_log]
    assert applied[-1] == seqs[-1]  # the newest command is always applied
    assert applied == sorted(applied) and len(applied) + srv.counts["dropped_superseded"] == 6
    assert srv.counts["dropped_superseded"] >= 4 and robot.steps == len(applied)
    np.testing.assert_allclose(srv.applied_log[-1]["applied"], _action(0.06), atol=1e-7)


def test_estop_refuses_commands_until_release(rig):
    srv, robot, client = rig
    assert client.command(_action())["kind"] == "applied"
    rep = client.estop("operator")
    assert rep["status"]["mode"] == "estopped" and robot.stopped
    r = client.command(_action())
    assert r["kind"] == "dropped" and r["reason"] == "estopped"
    stream(client, _action(), steps=3)
    with pytest.raises(P.ServerError) as e:
        client.reset(seed=2)
    assert e.value.code == RP.RobotErrorCode.ESTOPPED
    st = client.wait_state(lambda s: s["mode"] == "estopped", 1.0)
    c = srv.counts
    assert st["hold_reason"] == "operator" and robot.steps == 1
    assert c["dropped_estopped"] >= 2 and c["dropped_estopped"] + c["dropped_superseded"] == 4
    assert client.release()["status"]["mode"] == "idle" and not robot.stopped
    assert client.command(_action())["kind"] == "applied" and robot.steps == 2


def test_malformed_messages_never_kill_the_server(rig):
    srv, robot, client = rig
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(srv.address)
    good = RP.request("command", 7, seq=1, t_sent=time.time(), action=np.zeros(7, np.float32))
    cases = [
        (b"\xc1\xff garbage", P.ErrorCode.BAD_MESSAGE),
        (msgpack.packb([1, 2, 3]), P.ErrorCode.BAD_MESSAGE),
        (P.pack({"kind": "hello"}), P.ErrorCode.VERSION_MISMATCH),
        (P.pack({"v": 99, "kind": "hello"}), P.ErrorCode.VERSION_MISMATCH),
        (P.pack({"v": 1, "kind": "fly"}), P.ErrorCode.UNKNOWN_KIND),
        (P.pack({k: v for k, v in good.items() if k != "action"}), P.ErrorCode.MISSING_FIELD),
        (P.pack({**good, "action": np.zeros(6, np.float32)}), P.ErrorCode.BAD_FIELD),
        (P.pack({**good, "action": np.zeros(7, np.int64)}), P.ErrorCode.BAD_FIELD),
        (P.pack({**good, "action": {"__ndarray__": True, "data": b"12", "dtype": "<f4", "shape": [7]}}),
         P.ErrorCode.BAD_FIELD),
        (P.pack({**good, "seq": "one"}), P.ErrorCode.BAD_FIELD),
        (P.pack({**good, "t_sent": float("nan")}), P.ErrorCode.BAD_FIELD),
        (P.pack({**good, "action": np.full(7, np.nan, np.float32)}), RP.RobotErrorCode.UNSAFE_ACTION),
        (P.pack({"v": 1, "kind": "reset", "seed": -3}), P.ErrorCode.BAD_FIELD),
        (P.pack({"v": 1, "kind": "estop", "reason": 5}), P.ErrorCode.BAD_FIELD),
    ]
    for payload, code in cases:
        raw.send(payload)
        assert raw.poll(10_000), f"no reply to {payload[:40]!r}"
        reply = P.unpack(raw.recv())
        assert reply["kind"] == "error" and reply["code"] == code, (payload[:60], reply)
    raw.send_multipart([b"a", b"b", b"c"])  # not one payload frame
    assert raw.poll(10_000) and P.unpack(raw.recv())["code"] == P.ErrorCode.BAD_ENVELOPE
    huge = ctx.socket(zmq.DEALER)  # over max_message_bytes: zmq drops that peer; the server carries on
    huge.setsockopt(zmq.LINGER, 0)
    huge.connect(srv.address)
    huge.send(b"x" * (srv.config.max_message_bytes + 10))
    req = ctx.socket(zmq.REQ)  # a REQ client works too (identity, empty delimiter, payload)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(srv.address)
    req.send(P.pack(RP.request("hello", 1)))
    assert req.poll(10_000) and P.unpack(req.recv())["kind"] == "hello"
    for s in (raw, huge, req):
        s.close(0)
    assert robot.steps == 0 and srv.robot.safety.summary()["rejected"] == 1
    assert client.command(_action())["kind"] == "applied" and robot.steps == 1  # alive and well
    assert client.hello()["robot"] == "sim"


def test_observation_and_state_publication(rig):
    srv, robot, client = rig
    obs = client.observe()
    assert obs["kind"] == "observation" and obs["images"] == {}  # no cameras on this sim
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (9,)
    np.testing.assert_array_equal(obs["state"], robot.get_state())
    assert obs["instruction"] == "lift the cube" and obs["status"]["mode"] == "idle"
    first = client.wait_state(lambda s: True, 2.0)
    time.sleep(1.0)
    last = client.latest_state(200)
    rate = (last["pub_seq"] - first["pub_seq"]) / (last["t"] - first["t"])
    assert 30 <= rate <= 60, rate  # 50 Hz
    meta = client.metadata
    assert meta["watchdog_ms"] == WATCHDOG_MS and meta["action_spec"]["dim"] == 7
    assert meta["observation_spec"]["state_dim"] == 9 and meta["state_endpoint"] == srv.state_address


def test_network_bind_needs_keys_or_insecure(env):
    with pytest.raises(ValueError, match="--server-key"):
        RobotServer(SimRobot(env=env), RobotServerConfig(bind="tcp://0.0.0.0:5599"))
    with pytest.raises(ValueError, match="--server-key"):
        RobotServer(SimRobot(env=env), RobotServerConfig(bind="tcp://127.0.0.1:5599", state_bind="tcp://*:5600"))
    RobotServer(SimRobot(env=env), RobotServerConfig(bind="tcp://0.0.0.0:5599", insecure=True))  # allowed (not started)
    with pytest.raises(ValueError, match="server keys"):
        RobotServerConfig(server_secret_key="k.key_secret")  # keys come in pairs
    with pytest.raises(ValueError, match="watchdog_ms"):
        RobotServerConfig(watchdog_ms=0)


def test_a_dead_robot_server_is_reported_as_lost(rig):
    """RemoteRobot (async) names the robot server once its state publications stop; a request to it times out as
    RobotServerLost too (`vla run` turns both into exit code 4 with the address)."""
    from robot_bridge.robot_client import RemoteRobot, RobotServerLost

    srv, robot, client = rig
    remote = RemoteRobot(client, instruction="lift", lost_after_s=0.5)
    remote.apply(_action())
    assert client.latest_state(timeout_ms=500) is not None
    srv.stop()  # the server dies
    end = time.monotonic() + 5
    with pytest.raises(RobotServerLost, match=f"robot server at {srv.address}: no state publication"):
        while time.monotonic() < end:
            remote.apply(_action())
            time.sleep(0.05)
    client.timeout_ms = 300.0
    with pytest.raises(RobotServerLost, match=f"robot server at {srv.address}: observe: no "):
        remote.get_observation()
