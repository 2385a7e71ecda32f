"""Wire format shared by the policy server and the robot-side client (docs/PROTOCOL.md).

Every message is one msgpack map. Arrays travel as openpi lays them out:
    {"__ndarray__": True, "data": <bytes>, "dtype": "<f4", "shape": [H, D]}
(keys may be str or bin: openpi's client packs them as bin). Nothing is ever unpickled.

This module imports only numpy and msgpack: the robot side must not need torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # two 1024 px RGB images fit with room to spare
MAX_IMAGE_SIDE = 2048
MAX_INSTRUCTION_CHARS = 1024
MAX_ARRAY_DIMS = 4

KINDS = ("hello", "infer", "reset")  # request kinds; replies: hello, actions, reset, error


class ErrorCode:
    """Codes carried by every `error` reply (see docs/PROTOCOL.md)."""

    BAD_MESSAGE = "bad_message"  # not decodable msgpack, or not a map
    BAD_ENVELOPE = "bad_envelope"  # zmq frames not [identity, (empty,) payload]
    VERSION_MISMATCH = "version_mismatch"  # "v" missing or not PROTOCOL_VERSION
    UNKNOWN_KIND = "unknown_kind"  # "kind" missing or not one of KINDS
    MISSING_FIELD = "missing_field"  # a required field is absent
    BAD_FIELD = "bad_field"  # a field has the wrong type, dtype, shape or value
    TOO_LARGE = "too_large"  # message or array over the server's limits
    OVERLOADED = "overloaded"  # the inference queue is full; retry later
    INFERENCE_FAILED = "inference_failed"  # the model raised on a request that passed validation
    SHUTTING_DOWN = "shutting_down"  # the server is stopping
    INTERNAL = "internal"  # a bug in the server; the message says what

    ALL = (BAD_MESSAGE, BAD_ENVELOPE, VERSION_MISMATCH, UNKNOWN_KIND, MISSING_FIELD, BAD_FIELD, TOO_LARGE,
           OVERLOADED, INFERENCE_FAILED, SHUTTING_DOWN, INTERNAL)


class ProtocolError(ValueError):
    """A message that breaks the protocol; `code` is one of ErrorCode."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ServerError(RuntimeError):
    """The server answered with an error reply."""

    def __init__(self, code: str, message: str):
        super().__init__(f"server error {code}: {message}")
        self.code = code
        self.message = message


# ----------------------------------------------------------------------------------------------------------- arrays
_ARRAY_KEYS = ("__ndarray__", "data", "dtype", "shape")
_BIN_ARRAY_KEYS = {k: k.encode() for k in _ARRAY_KEYS}


def encode_array(a: np.ndarray, bin_keys: bool = False) -> dict:
    """ndarray -> the wire map. bin_keys=True writes openpi's bin keys (its client only reads those)."""
    a = np.asarray(a)
    if a.dtype.kind in "OVUSc" or a.dtype.hasobject:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"array dtype {a.dtype} cannot go on the wire (numeric or bool only)")
    a = np.ascontiguousarray(a)
    out = {"__ndarray__": True, "data": a.tobytes(), "dtype": a.dtype.str, "shape": list(a.shape)}
    if bin_keys:
        return {_BIN_ARRAY_KEYS[k]: v for k, v in out.items()}
    return out


def is_array_map(obj) -> bool:
    return isinstance(obj, dict) and (obj.get("__ndarray__") is True or obj.get(b"__ndarray__") is True)


def _get(obj: dict, key: str):
    if key in obj:
        return obj[key]
    return obj.get(key.encode())


def decode_array(obj, name: str, dtypes: tuple[str, ...], ndim: int | None = None, shape: tuple | None = None,
                 max_bytes: int | None = None) -> np.ndarray:
    """Validate a wire array map and return a writable copy.

    dtypes: accepted dtype strings ("<f4", "|u1", ...); shape: expected shape, None entries match any size.
    Every check happens before a byte is interpreted; a failure raises ProtocolError naming `name`.
    """
    if not is_array_map(obj):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{name}: expected an array map "
                                                 "{'__ndarray__': true, 'data', 'dtype', "
                                                 f"'shape'}}, got {_describe(obj)}")
    data, dt, shp = _get(obj, "data"), _get(obj, "dtype"), _get(obj, "shape")
    if isinstance(dt, bytes):
        dt = dt.decode("ascii", "replace")
    if not isinstance(dt, str) or dt not in dtypes:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{name}: dtype {dt!r} not accepted; expected one of {list(dtypes)}")
    if not isinstance(shp, (list, tuple)) or not all(type(s) is int and s >= 0 for s in shp):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{name}: shape must be a list of non-negative ints, got {shp!r}")
    if len(shp) > MAX_ARRAY_DIMS or (ndim is not None and len(shp) != ndim):
        want = ndim if ndim is not None else f"<= {MAX_ARRAY_DIMS}"
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{name}: expected {want} dimensions, got shape {list(shp)}")
    if shape is not None and any(w is not None and w != s for w, s in zip(shape, shp)):
        exp = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{name}: expected shape {exp}, got {tuple(shp)}")
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{name}: 'data' must be bytes, got {_describe(data)}")
    itemsize = np.dtype(dt).itemsize
    nbytes = math.prod(shp) * itemsize  # python ints: no overflow on absurd shapes
    if max_bytes is not None and nbytes > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{name}: {nbytes} bytes exceeds the limit of {max_bytes}")
    if len(data) != nbytes:
        raise ProtocolError(ErrorCode.BAD_FIELD,
                            f"{name}: shape {tuple(shp)} of {dt} needs {nbytes} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=np.dtype(dt)).reshape(shp).copy()  # frombuffer is read-only: copy


# ------------------------------------------------------------------------------------------------- pack / unpack
def _default(obj):
    if isinstance(obj, np.ndarray):
        return encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot pack {type(obj).__name__}")


def _default_bin(obj):
    if isinstance(obj, np.ndarray):
        return encode_array(obj, bin_keys=True)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot pack {type(obj).__name__}")


def pack(msg: dict, bin_keys: bool = False) -> bytes:
    """dict (ndarrays anywhere inside) -> msgpack bytes. bin_keys: openpi's array key layout."""
    return msgpack.packb(msg, default=_default_bin if bin_keys else _default, use_bin_type=True)


def unpack(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict:
    """msgpack bytes -> dict, arrays left as wire maps (decode them with decode_array / decode_arrays).

    Raises ProtocolError(BAD_MESSAGE | TOO_LARGE) for anything that is not one well-formed map.
    """
    if len(data) > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:  # max_*_len default to len(data); extension types (max_ext_len=0) are refused
        msg = msgpack.unpackb(data, raw=False, strict_map_key=False, max_ext_len=0, timestamp=0)
    except Exception as e:  # noqa: BLE001 - ValueError, ExtraData, FormatError, StackError, UnicodeDecodeError...
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"not a valid msgpack message ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"expected a msgpack map, got {_describe(msg)}")
    return msg


def decode_arrays(obj):
    """Replace every wire array map inside obj by a writable ndarray (client side; trusts only the layout)."""
    if is_array_map(obj):
        dt = _get(obj, "dtype")
        dt = dt.decode() if isinstance(dt, bytes) else dt
        return decode_array(obj, "array", dtypes=(dt,) if isinstance(dt, str) and dt in _SAFE_DTYPES else ())
    if isinstance(obj, dict):
        return {(k.decode() if isinstance(k, bytes) else k): decode_arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_arrays(v) for v in obj]
    return obj


_SAFE_DTYPES = ("|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8", "|b1")


def _describe(obj) -> str:
    if isinstance(obj, (bytes, bytearray)):
        return f"bytes[{len(obj)}]"
    if isinstance(obj, dict):
        return f"map with keys {[k for k in list(obj)[:6]]}"
    if isinstance(obj, (list, tuple)):
        return f"array[{len(obj)}]"
    if isinstance(obj, str):
        return f"str {obj[:40]!r}"
    return type(obj).__name__ if obj is not None else "nil"


# ------------------------------------------------------------------------------------------------------ requests
@dataclass
class Request:
    """A validated request. obs holds ndarrays (infer only)."""

    kind: str
    id: int | str | None
    episode_id: int | str | None = None
    step: int | None = None
    client_time: float | None = None
    obs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ObsSpec:
    """What an observation must look like: the policy's cameras, state size and limits."""

    cameras: tuple[str, ...]
    state_dim: int
    max_image_side: int = MAX_IMAGE_SIDE
    max_instruction_chars: int = MAX_INSTRUCTION_CHARS
    action_dim: int | None = None  # for prefix_actions (real-time chunking); None: the field is refused
    chunk_size: int | None = None

    @classmethod
    def from_metadata(cls, meta: dict) -> "ObsSpec":
        takes = bool(meta.get("prefix_actions"))  # the policy inpaints given first steps (real-time chunking)
        return cls(cameras=tuple(meta["cameras"]), state_dim=int(meta["state_dim"]),
                   action_dim=int(meta["action_dim"]) if takes and meta.get("action_dim") else None,
                   chunk_size=int(meta["chunk_size"]) if takes and meta.get("chunk_size") else None)


_ID_TYPES = (int, str)


def request_id(msg) -> int | str | None:
    """The request's id if it is usable for echoing (int or short str), else None."""
    rid = msg.get("id") if isinstance(msg, dict) else None
    if isinstance(rid, bool) or not isinstance(rid, _ID_TYPES) or (isinstance(rid, str) and len(rid) > 128):
        return None
    return rid


def _optional(msg: dict, key: str, types: tuple, what: str):
    val = msg.get(key)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, types):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{key}: expected {what}, got {_describe(val)}")
    if isinstance(val, str) and len(val) > 128:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{key}: longer than 128 characters")
    if isinstance(val, float) and not math.isfinite(val):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{key}: not finite")
    return val


def parse_request(msg: dict, spec: ObsSpec) -> Request:
    """Validate a decoded map against the protocol and the policy's observation spec.

    Order: version, kind, ids, then the observation (so a wrong version is reported as such).
    """
    v = msg.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.VERSION_MISMATCH,
                            f"client speaks protocol version {v!r}, this server speaks {PROTOCOL_VERSION} "
                            f"(field 'v'); upgrade the older side")
    kind = msg.get("kind")
    if kind not in KINDS:
        raise ProtocolError(ErrorCode.UNKNOWN_KIND, f"kind: expected one of {list(KINDS)}, got {_describe(kind)}")
    rid = msg.get("id")
    if rid is not None and request_id(msg) is None:
        raise ProtocolError(ErrorCode.BAD_FIELD, "id: expected an int or a str of at most 128 characters")
    req = Request(kind=kind, id=rid,
                  episode_id=_optional(msg, "episode_id", (int, str), "an int or str"),
                  step=_optional(msg, "step", (int,), "an int"),
                  client_time=_optional(msg, "client_time", (int, float), "a number (seconds)"))
    if kind == "infer":
        req.obs = parse_obs(msg, spec)
    return req


def as_model_floats(a: np.ndarray, name: str) -> np.ndarray:
    """Cast to float32, the dtype the model reads, and only then check finiteness: a float64 1e300 is finite but
    overflows to inf in float32 (it would fail inside a batch, not here). ProtocolError names the field."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(a).astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        idx = np.where(bad)[0].tolist()
        raw = np.asarray(a)[bad]
        why = ("NaN or inf" if not np.all(np.isfinite(raw))
               else f"beyond float32's range (|x| > {np.finfo(np.float32).max:.3g})")
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{name}: {why} at {idx[:8]}")
    return out


def parse_obs(msg: dict, spec: ObsSpec) -> dict:
    """msg with images, state, instruction -> {"images": {cam: uint8 (H, W, 3)}, "state": float32 (S,),
    "instruction"}."""
    for key in ("images", "state", "instruction"):
        if key not in msg:
            raise ProtocolError(ErrorCode.MISSING_FIELD, f"{key}: required for kind 'infer'")
    images = msg["images"]
    if not isinstance(images, dict) or is_array_map(images):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"images: expected a map camera -> array, got {_describe(images)}")
    names = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else k): v for k, v in images.items()}
    missing = [c for c in spec.cameras if c not in names]
    extra = [str(c) for c in names if c not in spec.cameras]
    if missing or extra:
        raise ProtocolError(ErrorCode.MISSING_FIELD if missing else ErrorCode.BAD_FIELD,
                            f"images: expected cameras {list(spec.cameras)}; missing {missing}, unknown {extra[:4]}")
    side = spec.max_image_side
    out_images = {}
    for cam in spec.cameras:
        im = decode_array(names[cam], f"images.{cam}", dtypes=("|u1",), ndim=3, shape=(None, None, 3),
                          max_bytes=side * side * 3)
        if not (1 <= im.shape[0] <= side and 1 <= im.shape[1] <= side):
            raise ProtocolError(ErrorCode.TOO_LARGE if max(im.shape[:2]) > side else ErrorCode.BAD_FIELD,
                                f"images.{cam}: height and width must be 1..{side}, got {im.shape[:2]}")
        out_images[cam] = im
    state = as_model_floats(decode_array(msg["state"], "state", dtypes=("<f4", "<f8"), ndim=1, shape=(spec.state_dim,)),
                            "state")
    instr = msg["instruction"]
    if not isinstance(instr, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"instruction: expected str, got {_describe(instr)}")
    if len(instr) > spec.max_instruction_chars:
        raise ProtocolError(ErrorCode.TOO_LARGE,
                            f"instruction: {len(instr)} characters exceeds {spec.max_instruction_chars}")
    out = {"images": out_images, "state": state, "instruction": instr}
    if msg.get("prefix_actions") is not None:
        out["prefix_actions"] = parse_prefix_actions(msg["prefix_actions"], spec)
    return out


def parse_prefix_actions(obj, spec: ObsSpec) -> np.ndarray:
    """Optional `prefix_actions` float (d, action_dim), 0 <= d < chunk_size: the actions the client will execute
    while this chunk is decoded (real-time chunking); the chunk that comes back starts with them, unchanged."""
    if spec.action_dim is None or spec.chunk_size is None:
        raise ProtocolError(ErrorCode.BAD_FIELD, "prefix_actions: this server's policy does not take a prefix")
    a = decode_array(obj, "prefix_actions", dtypes=("<f4", "<f8"), ndim=2, shape=(None, spec.action_dim),
                     max_bytes=spec.chunk_size * spec.action_dim * 8)
    if a.shape[0] >= spec.chunk_size:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"prefix_actions: {a.shape[0]} steps; expected fewer than the chunk's "
                                                 f"{spec.chunk_size}")
    return as_model_floats(a.reshape(-1), "prefix_actions").reshape(a.shape)


# -------------------------------------------------------------------------------------------------------- replies
def error_reply(code: str, message: str, rid=None) -> dict:
    return {"v": PROTOCOL_VERSION, "kind": "error", "id": rid, "code": code, "message": message}


def make_request(kind: str, rid: int, **fields) -> dict:
    return {"v": PROTOCOL_VERSION, "kind": kind, "id": rid, **fields}


def obs_fields(obs: dict) -> dict:
    """Our observation -> the infer request's fields (arrays as ndarrays; pack() encodes them)."""
    if not isinstance(obs, dict) or not {"images", "state", "instruction"} <= set(obs):
        raise ValueError("obs: expected a dict with 'images', 'state' and 'instruction'")
    images = {}
    for cam, im in obs["images"].items():
        im = np.asarray(im)
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"obs['images'][{cam!r}]: expected uint8 (H, W, 3), got {im.dtype} {im.shape}")
        images[str(cam)] = np.ascontiguousarray(im)
    state = np.asarray(obs["state"])
    if state.ndim != 1 or state.dtype.kind not in "fiu":
        raise ValueError(f"obs['state']: expected a 1-D float array, got {state.dtype} {state.shape}")
    if not isinstance(obs["instruction"], str):
        raise ValueError(f"obs['instruction']: expected str, got {type(obs['instruction']).__name__}")
    out = {"images": images, "state": np.ascontiguousarray(state, dtype=np.float32), "instruction": obs["instruction"]}
    if obs.get("prefix_actions") is not None:
        pa = np.asarray(obs["prefix_actions"], dtype=np.float32)
        if pa.ndim != 2:
            raise ValueError(f"obs['prefix_actions']: expected float (d, action_dim), got {pa.shape}")
        out["prefix_actions"] = np.ascontiguousarray(pa)
    return out
