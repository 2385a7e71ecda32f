"""Messages of the robot server (docs/ROBOTS.md). msgpack maps, arrays in protocol.py's wire layout.

Requests (client DEALER -> server ROUTER; "v": ROBOT_PROTOCOL_VERSION, "kind", "id"):
    hello                               -> hello {metadata}
    command  seq, t_sent, action (D,), ack?   -> nothing (latest wins), or with ack: applied | dropped
    observe                             -> observation {images, state, instruction, status}
    reset    seed?                      -> observation (after the robot's reset)
    estop    reason?                    -> estop {status}
    release                             -> release {status}
    status                              -> status {status}
Every failure -> error {code, message}. State publications (server PUB): state {state, mode, counters, ...}.
An observer key (CurveZMQ) may send hello, observe, status and estop; its command, reset and release are refused
with `unauthorized`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robot_bridge import protocol as P

ROBOT_PROTOCOL_VERSION = 1
REQUEST_KINDS = ("hello", "command", "observe", "reset", "estop", "release", "status")
MODES = ("idle", "active", "holding", "homing", "estopped", "fault")
DROP_REASONS = ("superseded", "stale", "future", "estopped", "fault", "homing")
COMMANDER_KINDS = ("command", "reset", "release")  # refused to observer keys


class RobotErrorCode(P.ErrorCode):
    UNSAFE_ACTION = "unsafe_action"  # NaN/inf: the safety layer refused it, nothing applied
    ESTOPPED = "estopped"  # the request needs a released robot
    ROBOT_FAULT = "robot_fault"  # the arm or its controller raised
    UNSUPPORTED = "unsupported"  # e.g. reset with a seed on hardware
    UNAUTHORIZED = "unauthorized"  # an observer key asked to command, reset or release
    BUSY = "busy"  # a reset (homing) is running: wait for its reply, or e-stop


@dataclass
class RobotRequest:
    kind: str
    id: int | str | None
    seq: int | None = None
    t_sent: float | None = None  # client's time.time() when sent (seconds)
    action: np.ndarray | None = None  # float (D,)
    ack: bool = False
    seed: int | None = None
    reason: str | None = None


def parse_robot_request(msg: dict, action_dim: int) -> RobotRequest:
    v = msg.get("v")
    if type(v) is not int or v != ROBOT_PROTOCOL_VERSION:
        raise P.ProtocolError(P.ErrorCode.VERSION_MISMATCH,
                              f"client speaks robot protocol version {v!r}, this server speaks "
                              f"{ROBOT_PROTOCOL_VERSION} (field 'v')")
    kind = msg.get("kind")
    if kind not in REQUEST_KINDS:
        raise P.ProtocolError(P.ErrorCode.UNKNOWN_KIND, f"kind: expected one of {list(REQUEST_KINDS)}, got "
                                                        f"{P._describe(kind)}")
    rid = msg.get("id")
    if rid is not None and P.request_id(msg) is None:
        raise P.ProtocolError(P.ErrorCode.BAD_FIELD, "id: expected an int or a str of at most 128 characters")
    req = RobotRequest(kind=kind, id=rid)
    if kind == "command":
        for key in ("seq", "t_sent", "action"):
            if key not in msg:
                raise P.ProtocolError(P.ErrorCode.MISSING_FIELD, f"{key}: required for kind 'command'")
        seq = msg["seq"]
        if type(seq) is not int or seq < 0:
            raise P.ProtocolError(P.ErrorCode.BAD_FIELD, f"seq: expected an int >= 0, got {P._describe(seq)}")
        t = msg["t_sent"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise P.ProtocolError(P.ErrorCode.BAD_FIELD, f"t_sent: expected a finite number (seconds, the client's "
                                                         f"time.time()), got {P._describe(t)}")
        req.seq, req.t_sent = seq, float(t)
        req.action = P.decode_array(msg["action"], "action", dtypes=("<f4", "<f8"), ndim=1, shape=(action_dim,))
        ack = msg.get("ack", False)
        if not isinstance(ack, bool):
            raise P.ProtocolError(P.ErrorCode.BAD_FIELD, f"ack: expected a bool, got {P._describe(ack)}")
        req.ack = ack
    elif kind == "reset":
        seed = msg.get("seed")
        if seed is not None and (type(seed) is not int or seed < 0):
            raise P.ProtocolError(P.ErrorCode.BAD_FIELD, f"seed: expected an int >= 0 or nil, got {P._describe(seed)}")
        req.seed = seed
    elif kind == "estop":
        reason = msg.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
            raise P.ProtocolError(P.ErrorCode.BAD_FIELD, "reason: expected a str of at most 200 characters")
        req.reason = reason
    return req


def request(kind: str, rid: int, **fields) -> dict:
    return {"v": ROBOT_PROTOCOL_VERSION, "kind": kind, "id": rid, **fields}


def reply(kind: str, rid, **fields) -> dict:
    return {"v": ROBOT_PROTOCOL_VERSION, "kind": kind, "id": rid, **fields}


def error(code: str, message: str, rid=None) -> dict:
    return {"v": ROBOT_PROTOCOL_VERSION, "kind": "error", "id": rid, "code": code, "message": message}
