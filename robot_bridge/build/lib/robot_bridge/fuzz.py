"""Malformed-message generator for the server's robustness tests and benchmark (numpy + msgpack only).

Every message it yields is invalid: random bytes, a truncated request, two payload frames, or a valid-looking
infer request with one or more faults (wrong version or kind, missing keys, wrong types, dtypes or shapes,
absurd sizes, NaN state, overlong strings).
"""

from __future__ import annotations

import numpy as np

from robot_bridge import protocol as P


def valid_request(spec: P.ObsSpec, rid: int, rng: np.random.Generator, size: int = 8) -> dict:
    return P.make_request(
        "infer", rid,
        images={c: P.encode_array(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for c in spec.cameras},
        state=P.encode_array(np.zeros(spec.state_dim, np.float32)), instruction="lift the cube", episode_id=1,
        step=0, client_time=1.0)


def _bad_array(rng, spec: P.ObsSpec) -> dict:
    """A wire array with exactly one fault (as image or state)."""
    a = P.encode_array(np.zeros((8, 8, 3), np.uint8))
    fault = int(rng.integers(0, 7))
    if fault == 0:
        a["dtype"] = ["<f4", "<u2", ">u1", "|O", "<U1", "zz", "|V3", "<c8", 5, None][int(rng.integers(0, 10))]
    elif fault == 1:
        a["shape"] = [[8, 8], [8, 8, 4], [9, 8, 3], [1 << 40, 1 << 40, 3], [-1, 8, 3], [8, 8, 3, 1], "883", None,
                      [8.0, 8, 3], [0, 8, 3]][int(rng.integers(0, 10))]
    elif fault == 2:
        a["data"] = a["data"][: int(rng.integers(0, len(a["data"])))]
    elif fault == 3:
        a["data"] = ["x", 1, None, [1, 2]][int(rng.integers(0, 4))]
    elif fault == 4:
        del a[["__ndarray__", "data", "dtype", "shape"][int(rng.integers(0, 4))]]
    elif fault == 5:
        a["__ndarray__"] = [False, 0, "yes", None][int(rng.integers(0, 4))]
    else:
        a = [None, 1, "pixels", [1, 2, 3], {}, b"\x00" * 8][int(rng.integers(0, 6))]
    return a


def malformed(spec: P.ObsSpec, rid: int, rng: np.random.Generator) -> bytes | list[bytes]:
    """One invalid message (bytes), or a list of frames (a bad envelope)."""
    r = int(rng.integers(0, 14))
    if r == 0:
        return rng.bytes(int(rng.integers(0, 64)))
    if r == 1:
        raw = P.pack(valid_request(spec, rid, rng))
        return raw[: int(rng.integers(0, len(raw)))]
    if r == 2:
        return [P.pack(valid_request(spec, rid, rng)), rng.bytes(4)]
    if r == 3:
        import msgpack

        return msgpack.packb([None, 1, "x", [1, 2], b"\x00", 1.5][int(rng.integers(0, 6))])
    m = valid_request(spec, rid, rng)
    pick = lambda xs: xs[int(rng.integers(0, len(xs)))]  # noqa: E731
    cams = list(spec.cameras)
    if r == 4:
        m["v"] = pick([0, 2, -1, 999, None, "1", 1.0, True])
    elif r == 5:
        m["kind"] = pick(["shutdown", "", "HELLO", "infer ", None, 7, b"infer", ["infer"]])
    elif r == 6:
        m.pop(pick(["v", "kind", "images", "state", "instruction"]))
    elif r == 7:
        m["images"][pick(cams)] = _bad_array(rng, spec)
    elif r == 8:
        m["state"] = pick([_bad_array(rng, spec), P.encode_array(np.zeros(spec.state_dim + 1, np.float32)),
                           P.encode_array(np.full(spec.state_dim, np.nan, np.float32)),
                           P.encode_array(np.zeros(spec.state_dim, np.int32)), [0.0] * spec.state_dim])
    elif r == 9:
        m["instruction"] = pick([None, 3, 1.5, b"lift", [], {}, "x" * (P.MAX_INSTRUCTION_CHARS + 1)])
    elif r == 10:
        m[pick(["id", "step", "episode_id", "client_time"])] = pick([[1], {}, True, float("nan"), "x" * 200])
    elif r == 11:
        m["images"] = pick([None, 1, "x", [], {}, {cams[0]: m["images"][cams[0]]},
                            {**m["images"], "extra_cam": m["images"][cams[0]]}])
    elif r == 12:
        big = P.encode_array(np.zeros((4, 4, 3), np.uint8))
        big["shape"] = pick([[P.MAX_IMAGE_SIDE + 1, 1, 3], [1 << 20, 1 << 20, 3]])
        m["images"][pick(cams)] = big
    else:  # several faults at once
        m["v"] = 3
        m.pop("state")
        m["images"] = "none"
    return P.pack(m)
