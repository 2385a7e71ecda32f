"""Wire protocol: array layout, validation of every field, error replies over a real ROUTER socket, fuzzing."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq
from bridge_helpers import CAMERAS, make_obs

from robot_bridge import fuzz
from robot_bridge import protocol as P
from robot_bridge.client import PolicyClient
from robot_bridge.serving.server import PolicyServer

SPEC = P.ObsSpec(cameras=CAMERAS, state_dim=9)
MAX_MSG = 1 << 20  # the test server's limit: 1 MiB


def valid_request(rid=1, size=8, rng=None) -> dict:
    rng = rng or np.random.default_rng(0)
    return P.make_request(
        "infer", rid,
        images={c: P.encode_array(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for c in CAMERAS},
        state=P.encode_array(np.zeros(9, np.float32)), instruction="lift the cube", episode_id=1, step=0,
        client_time=1.0)


# ------------------------------------------------------------------------------------------------- unit level
@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64", "int32", "bool", "float16", "int64"])
def test_array_round_trip_is_exact_and_writable(dtype):
    a = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    for bin_keys in (False, True):
        wire = msgpack.unpackb(P.pack({"a": a}, bin_keys=bin_keys))["a"]
        assert (b"__ndarray__" in wire) == bin_keys  # openpi's layout uses bin keys
        out = P.decode_array(wire, "a", dtypes=(a.dtype.str,))
        assert out.dtype == a.dtype and out.shape == a.shape and np.array_equal(out, a)
        out[0, 0, 0] = 1  # a copy, not a read-only view of the message
        assert P.decode_arrays(wire).shape == a.shape


def test_object_arrays_refused():
    with pytest.raises(P.ProtocolError, match="cannot go on the wire"):
        P.encode_array(np.array([object()]))


def test_valid_infer_request_parses():
    req = P.parse_request(P.unpack(P.pack(valid_request(rid=7))), SPEC)
    assert req.kind == "infer" and req.id == 7 and req.step == 0 and req.episode_id == 1
    assert req.obs["images"]["agentview"].shape == (8, 8, 3) and req.obs["state"].dtype == np.float32


def _mut(fn):
    m = valid_request()
    fn(m)
    return m


def _set(path, value):
    def f(m):
        node = m
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return f


def _del(path):
    def f(m):
        node = m
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
    return f


# (name, message as dict or raw bytes, expected error code)
CASES = [
    ("truncated", P.pack(valid_request())[:-5], P.ErrorCode.BAD_MESSAGE),
    ("empty frame", b"", P.ErrorCode.BAD_MESSAGE),
    ("garbage", b"\xc1\xc1\xc1", P.ErrorCode.BAD_MESSAGE),
    ("too nested", b"\x91" * 5000 + b"\xc0", P.ErrorCode.BAD_MESSAGE),
    ("trailing bytes", P.pack(valid_request()) + b"\x00", P.ErrorCode.BAD_MESSAGE),
    ("list at top", msgpack.packb([1, 2, 3]), P.ErrorCode.BAD_MESSAGE),
    ("ext type", msgpack.packb(msgpack.ExtType(5, b"xx")), P.ErrorCode.BAD_MESSAGE),
    ("no version", _mut(_del(["v"])), P.ErrorCode.VERSION_MISMATCH),
    ("version 2", _mut(_set(["v"], 2)), P.ErrorCode.VERSION_MISMATCH),
    ("version float", _mut(_set(["v"], 1.0)), P.ErrorCode.VERSION_MISMATCH),
    ("version str", _mut(_set(["v"], "1")), P.ErrorCode.VERSION_MISMATCH),
    ("unknown kind", _mut(_set(["kind"], "shutdown")), P.ErrorCode.UNKNOWN_KIND),
    ("kind as bytes", _mut(_set(["kind"], b"infer")), P.ErrorCode.UNKNOWN_KIND),
    ("no kind", _mut(_del(["kind"])), P.ErrorCode.UNKNOWN_KIND),
    ("id list", _mut(_set(["id"], [1])), P.ErrorCode.BAD_FIELD),
    ("id bool", _mut(_set(["id"], True)), P.ErrorCode.BAD_FIELD),
    ("step str", _mut(_set(["step"], "3")), P.ErrorCode.BAD_FIELD),
    ("step float", _mut(_set(["step"], 1.5)), P.ErrorCode.BAD_FIELD),
    ("episode map", _mut(_set(["episode_id"], {})), P.ErrorCode.BAD_FIELD),
    ("client_time nan", _mut(_set(["client_time"], float("nan"))), P.ErrorCode.BAD_FIELD),
    ("no images", _mut(_del(["images"])), P.ErrorCode.MISSING_FIELD),
    ("no state", _mut(_del(["state"])), P.ErrorCode.MISSING_FIELD),
    ("no instruction", _mut(_del(["instruction"])), P.ErrorCode.MISSING_FIELD),
    ("missing camera", _mut(_del(["images", "wrist"])), P.ErrorCode.MISSING_FIELD),
    ("extra camera", _mut(lambda m: m["images"].__setitem__("top", m["images"]["wrist"])), P.ErrorCode.BAD_FIELD),
    ("images list", _mut(_set(["images"], [1, 2])), P.ErrorCode.BAD_FIELD),
    ("image not array", _mut(_set(["images", "agentview"], "pixels")), P.ErrorCode.BAD_FIELD),
    ("image float dtype", _mut(lambda m: m["images"].__setitem__(
        "agentview", P.encode_array(np.zeros((8, 8, 3), np.float32)))), P.ErrorCode.BAD_FIELD),
    ("image dtype object", _mut(_set(["images", "agentview", "dtype"], "|O")), P.ErrorCode.BAD_FIELD),
    ("image dtype int", _mut(_set(["images", "agentview", "dtype"], 5)), P.ErrorCode.BAD_FIELD),
    ("image 4 channels", _mut(_set(["images", "agentview", "shape"], [8, 6, 4])), P.ErrorCode.BAD_FIELD),
    ("image 2-d", _mut(_set(["images", "agentview", "shape"], [24, 8])), P.ErrorCode.BAD_FIELD),
    ("image negative shape", _mut(_set(["images", "agentview", "shape"], [-8, -8, 3])), P.ErrorCode.BAD_FIELD),
    ("image float shape", _mut(_set(["images", "agentview", "shape"], [8.0, 8, 3])), P.ErrorCode.BAD_FIELD),
    ("image zero side", _mut(lambda m: m["images"].__setitem__(
        "agentview", P.encode_array(np.zeros((0, 8, 3), np.uint8)))), P.ErrorCode.BAD_FIELD),
    ("image data short", _mut(lambda m: m["images"]["agentview"].__setitem__(
        "data", m["images"]["agentview"]["data"][:-1])), P.ErrorCode.BAD_FIELD),
    ("image data str", _mut(_set(["images", "agentview", "data"], "abc")), P.ErrorCode.BAD_FIELD),
    ("image no data", _mut(_del(["images", "agentview", "data"])), P.ErrorCode.BAD_FIELD),
    ("image no marker", _mut(_del(["images", "agentview", "__ndarray__"])), P.ErrorCode.BAD_FIELD),
    ("image claims huge", _mut(_set(["images", "agentview", "shape"], [100000, 100000, 3])), P.ErrorCode.TOO_LARGE),
    ("image too tall", _mut(lambda m: m["images"].__setitem__(
        "agentview", P.encode_array(np.zeros((4096, 4, 3), np.uint8)))), P.ErrorCode.TOO_LARGE),
    ("state int", _mut(_set(["state"], P.encode_array(np.zeros(9, np.int32)))), P.ErrorCode.BAD_FIELD),
    ("state big-endian", _mut(_set(["state"], P.encode_array(np.zeros(9, ">f4")))), P.ErrorCode.BAD_FIELD),
    ("state 8 dims", _mut(_set(["state"], P.encode_array(np.zeros(8, np.float32)))), P.ErrorCode.BAD_FIELD),
    ("state 2-d", _mut(_set(["state"], P.encode_array(np.zeros((9, 1), np.float32)))), P.ErrorCode.BAD_FIELD),
    ("state list", _mut(_set(["state"], [0.0] * 9)), P.ErrorCode.BAD_FIELD),
    ("state nan", _mut(_set(["state"], P.encode_array(np.full(9, np.nan, np.float32)))), P.ErrorCode.BAD_FIELD),
    ("instruction int", _mut(_set(["instruction"], 3)), P.ErrorCode.BAD_FIELD),
    ("instruction bytes", _mut(_set(["instruction"], b"lift")), P.ErrorCode.BAD_FIELD),
    ("instruction long", _mut(_set(["instruction"], "x" * 5000)), P.ErrorCode.TOO_LARGE),
]


def _bytes(msg) -> bytes:
    return msg if isinstance(msg, bytes) else P.pack(msg)


@pytest.mark.parametrize("name,msg,code", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_is_refused_with_code(name, msg, code):
    with pytest.raises(P.ProtocolError) as ei:
        P.parse_request(P.unpack(_bytes(msg), MAX_MSG), SPEC)
    assert ei.value.code == code, ei.value


def test_oversized_message_refused_before_decoding():
    with pytest.raises(P.ProtocolError) as ei:
        P.unpack(b"\x00" * (MAX_MSG + 1), MAX_MSG)
    assert ei.value.code == P.ErrorCode.TOO_LARGE


def test_client_module_does_not_import_torch():
    code = ("import sys; import robot_bridge.client, robot_bridge.control_loop; "
            "bad = [m for m in ('torch', 'vla', 'sim', 'robosuite') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------------------- over the wire
@pytest.fixture(scope="module")
def policy():
    from vla.policy import Policy

    return Policy.untrained("tiny")


@pytest.fixture(scope="module")
def server(policy):
    # muting off: these tests send thousands of bad requests from one client and check each reply
    srv = PolicyServer(policy, bind="tcp://127.0.0.1:0", max_message_bytes=MAX_MSG,
                       max_bad_requests_per_s=10**9).start()
    yield srv
    srv.stop()


@pytest.fixture()
def dealer(server):
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(server.address)
    yield s
    s.close(0)
    ctx.term()


def _recv(sock, timeout_ms=2000):
    if not sock.poll(timeout_ms):
        return None
    return msgpack.unpackb(sock.recv(), raw=False)


def test_hello_metadata_and_random_port(server, policy):
    assert server.address.startswith("tcp://127.0.0.1:") and not server.address.endswith(":0")
    with PolicyClient(server.address, timeout_ms=3000) as c:
        meta = c.hello()
    assert meta["protocol_version"] == P.PROTOCOL_VERSION
    assert meta["action_dim"] == 7 and meta["chunk_size"] == 8 and meta["state_dim"] == 9
    assert meta["cameras"] == {c: [64, 64, 3] for c in CAMERAS}
    assert meta["suggested_rate_hz"] > 0 and meta["model"]


def test_every_malformed_case_gets_an_error_reply(dealer):
    for i, (name, msg, code) in enumerate(CASES):
        if isinstance(msg, dict) and type(msg.get("id")) is int:
            msg = {**msg, "id": 1000 + i}
        dealer.send(_bytes(msg))
        r = _recv(dealer)
        assert r is not None, f"{name}: no reply"
        assert r["kind"] == "error" and r["code"] == code, (name, r)
        assert r["v"] == P.PROTOCOL_VERSION and isinstance(r["message"], str) and r["message"]
        if isinstance(msg, dict) and msg.get("id") == 1000 + i:
            assert r["id"] == 1000 + i, name  # echoed whenever it could be read


def test_bad_envelope_and_bin_keys(dealer, policy):
    dealer.send_multipart([P.pack(valid_request()), b"second payload"])
    r = _recv(dealer)
    assert r["kind"] == "error" and r["code"] == P.ErrorCode.BAD_ENVELOPE
    # openpi's packer writes array keys as bin: accepted like str keys
    rng = np.random.default_rng(3)
    obs = make_obs(rng)
    dealer.send(P.pack(P.make_request("infer", 5, **P.obs_fields(obs)), bin_keys=True))
    r = _recv(dealer, 10_000)
    assert r["kind"] == "actions" and r["id"] == 5, r
    assert np.array_equal(P.decode_arrays(r["actions"]), policy.infer(obs)["actions"])


def test_version_mismatch_message_names_both_versions(dealer):
    dealer.send(P.pack({**P.make_request("hello", 9), "v": 2}))
    r = _recv(dealer)
    assert r["code"] == P.ErrorCode.VERSION_MISMATCH and r["id"] == 9
    assert "2" in r["message"] and str(P.PROTOCOL_VERSION) in r["message"]


def _fuzz_message(rng: np.random.Generator, rid: int) -> bytes | list[bytes]:
    """One malformed request: robot_bridge.fuzz's generator, or one of the named cases above."""
    if rng.random() < 0.7:
        return fuzz.malformed(SPEC, rid, rng)
    return _bytes(CASES[int(rng.integers(0, len(CASES)))][1])


def test_fuzz_10000_malformed_messages(server, dealer, policy):
    """Every malformed message gets an error reply (oversized ones drop the connection); the server lives on."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    n, window, replies, codes = 10_000, 50, 0, {}
    sent = 0
    while sent < n:
        k = min(window, n - sent)
        for i in range(k):
            m = _fuzz_message(rng, sent + i)
            dealer.send_multipart(m) if isinstance(m, list) else dealer.send(m)
        for _ in range(k):
            r = _recv(dealer, 5000)
            assert r is not None, f"seed {seed}: a malformed message got no reply"
            assert r["kind"] == "error" and r["code"] in P.ErrorCode.ALL, (seed, r)
            codes[r["code"]] = codes.get(r["code"], 0) + 1
            replies += 1
        sent += k
    assert replies == n, f"seed {seed}"
    assert len(codes) >= 6, codes  # the fuzzer reaches many distinct checks
    # messages over the size limit: the server drops the connection instead of reading them
    for _ in range(3):
        huge = P.pack({**valid_request(), "pad": b"\x00" * (MAX_MSG + 10)})
        dealer.send(huge)
        assert _recv(dealer, 300) is None
    assert server._thread.is_alive() and server.batcher._thread.is_alive()
    # ... and still answers a valid request, correctly
    obs = make_obs(np.random.default_rng(1))
    with PolicyClient(server.address, timeout_ms=10_000) as c:
        out = c.infer(obs, step=3)
    assert out["step"] == 3 and np.array_equal(out["actions"], policy.infer(obs)["actions"])
    assert server.counts["received"] >= n + 1


def test_state_is_validated_after_the_cast_to_float32():
    msg = P.obs_fields(make_obs(np.random.default_rng(0)))
    msg["state"] = P.encode_array(np.array([0.1] * 8 + [1e300], np.float64))
    with pytest.raises(P.ProtocolError, match=r"state: beyond float32's range .* at \[8\]") as ei:
        P.parse_obs(P.unpack(P.pack(msg)), SPEC)
    assert ei.value.code == P.ErrorCode.BAD_FIELD
    msg["state"] = P.encode_array(np.array([0.1] * 8 + [3e38], np.float64))  # within float32: fine
    assert P.parse_obs(P.unpack(P.pack(msg)), SPEC)["state"].dtype == np.float32


def test_a_client_flooding_invalid_requests_is_muted_and_the_others_are_served(policy):
    srv = PolicyServer(policy, bind="tcp://127.0.0.1:0", max_bad_requests_per_s=20, mute_s=0.5).start()
    ctx = zmq.Context()
    bad = ctx.socket(zmq.DEALER)
    bad.connect(srv.address)
    try:
        msg = P.obs_fields(make_obs(np.random.default_rng(0)))
        msg["state"] = P.encode_array(np.full(9, 1e300))
        payload = P.pack(P.make_request("infer", 1, **msg))
        for _ in range(100):
            bad.send(payload)
        replies = 0
        while bad.poll(500):
            bad.recv()
            replies += 1
        assert replies == 21  # 20 error replies within the budget, the 21st trips it; the rest dropped unread
        assert srv.counts["mutes"] == 1 and srv.counts["dropped_muted"] == 79
        with PolicyClient(srv.address, timeout_ms=10_000) as c:  # another client is served meanwhile
            assert c.infer(make_obs(np.random.default_rng(1)))["actions"].shape == (8, 7)
        time.sleep(0.6)
        bad.send(payload)  # the mute has expired: an error reply again
        assert bad.poll(3000) and msgpack.unpackb(bad.recv())["code"] == P.ErrorCode.BAD_FIELD
    finally:
        bad.close(0)
        ctx.term()
        srv.stop()
