"""Client side of the robot server: `RobotClient` (the messages) and `RemoteRobot` (the ControlLoop's Robot
protocol over it, so the loop drives a remote arm with the same code path as an in-process sim env).

    client = RobotClient("tcp://127.0.0.1:5560")
    meta = client.hello()
    client.send_command(action)          # fire and forget (latest wins on the server)
    client.command(action)               # waits for "applied" / "dropped"
    obs = client.observe(); st = client.latest_state(); client.estop(); client.release()

Imports only numpy, msgpack and pyzmq. Not thread-safe: one thread per client.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import zmq

from robot_bridge import protocol as P
from robot_bridge import robot_protocol as RP
from robot_bridge.security import ClientKeys


class RobotClient:
    def __init__(self, address: str = "tcp://127.0.0.1:5560", timeout_ms: float = 2000.0,
                 client_secret_key: str | None = None, server_public_key: str | None = None,
                 subscribe: bool = True):
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms: expected > 0, got {timeout_ms}")
        self.address = address
        self.timeout_ms = float(timeout_ms)
        self.keys = ClientKeys.from_args(client_secret_key, server_public_key)
        self.subscribe = subscribe
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a server that is not connected (yet)
        if self.keys:
            self.keys.secure(self._sock)
        self._sock.connect(address)
        self._sub: zmq.Socket | None = None
        self._next_id = int.from_bytes(os.urandom(4), "little")
        self._seq = 0
        self.metadata: dict | None = None
        self.last_state: dict | None = None
        self.last_state_at: float | None = None  # time.monotonic() when last_state arrived
        self.command_errors: list[dict] = []  # error replies to fire-and-forget commands
        self.stats = {"commands": 0, "unsent": 0, "requests": 0, "timeouts": 0, "stray_replies": 0}

    # ----- requests -----
    def hello(self, timeout_ms: float | None = None) -> dict:
        meta = self._request("hello", {}, timeout_ms)["metadata"]
        if meta.get("protocol_version") != RP.ROBOT_PROTOCOL_VERSION:
            raise P.ProtocolError(P.ErrorCode.VERSION_MISMATCH, f"robot server speaks {meta.get('protocol_version')}, "
                                                                f"this client {RP.ROBOT_PROTOCOL_VERSION}")
        self.metadata = meta
        if self.subscribe and self._sub is None:
            self._subscribe(meta["state_endpoint"])
        return meta

    def observe(self, timeout_ms: float | None = None) -> dict:
        """-> {"images": {cam: uint8 (H, W, 3)}, "state": float32 (S,), "instruction", "status", "t_state"}."""
        return P.decode_arrays(self._request("observe", {}, timeout_ms))

    def reset(self, seed: int | None = None, timeout_ms: float | None = None) -> dict:
        return P.decode_arrays(self._request("reset", {"seed": seed}, timeout_ms))

    def estop(self, reason: str | None = None, timeout_ms: float | None = None) -> dict:
        return self._request("estop", {"reason": reason}, timeout_ms)

    def release(self, timeout_ms: float | None = None) -> dict:
        return self._request("release", {}, timeout_ms)

    def status(self, timeout_ms: float | None = None) -> dict:
        return self._request("status", {}, timeout_ms)

    def send_command(self, action, t_sent: float | None = None, ack: bool = False) -> int:
        """Send one action (D,) without waiting; returns its seq. t_sent defaults to now (time.time())."""
        self._seq += 1
        a = np.ascontiguousarray(action, dtype=np.float32)
        rid = self._new_id()
        msg = RP.request("command", rid, seq=self._seq, t_sent=time.time() if t_sent is None else t_sent,
                         action=a, ack=ack)
        self._last_command_id = rid
        try:
            self._sock.send(P.pack(msg), zmq.NOBLOCK)
            self.stats["commands"] += 1
        except zmq.Again:  # no connection to the server: the command is gone (never queued to arrive stale)
            self.stats["unsent"] += 1
        return self._seq

    def command(self, action, timeout_ms: float | None = None) -> dict:
        """Send with ack and wait: {"kind": "applied", "action", "status", ...} or {"kind": "dropped", "reason"}."""
        deadline = time.monotonic() + (timeout_ms or self.timeout_ms) / 1e3
        while not self._sock.poll(0, zmq.POLLOUT) and time.monotonic() < deadline:
            time.sleep(0.005)  # not connected yet: an acked command waits for the connection (up to the deadline)
        self.send_command(action, ack=True)
        reply = self._await(self._last_command_id, deadline)
        if reply is None:
            self.stats["timeouts"] += 1
            raise TimeoutError(f"command: no reply from {self.address} within {timeout_ms or self.timeout_ms:.0f} ms")
        if reply.get("kind") == "error":
            raise P.ServerError(str(reply.get("code")), str(reply.get("message")))
        return P.decode_arrays(reply)

    # ----- state subscription -----
    def _subscribe(self, endpoint: str) -> None:
        if endpoint.startswith("tcp://"):
            host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
            if host in ("0.0.0.0", "*", "[::]", "::"):  # the server bound every interface: use the host we reach
                mine = self.address[len("tcp://"):].rsplit(":", 1)[0]
                endpoint = f"tcp://{mine}:{endpoint.rsplit(':', 1)[1]}"
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.CONFLATE, 1)  # only the newest state matters
        if self.keys:
            self.keys.secure(sub)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        self._sub = sub

    def latest_state(self, timeout_ms: float = 0.0) -> dict | None:
        """The newest state publication received (waits up to timeout_ms for one newer than the last seen)."""
        if self._sub is None:
            raise RuntimeError("latest_state: call hello() first (with subscribe=True)")
        if self._sub.poll(int(timeout_ms), zmq.POLLIN):
            try:
                self.last_state = P.decode_arrays(P.unpack(self._sub.recv(zmq.NOBLOCK)))
                self.last_state_at = time.monotonic()
            except (zmq.Again, P.ProtocolError):
                pass
        return self.last_state

    def wait_state(self, predicate, timeout_s: float) -> dict | None:
        """Poll publications until predicate(state) is true; returns that state or None after timeout_s."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            st = self.latest_state(timeout_ms=max(1.0, min(50.0, (end - time.monotonic()) * 1e3)))
            if st is not None and predicate(st):
                return st
        return None

    # ----- transport -----
    def _new_id(self) -> int:
        self._next_id = (self._next_id + 1) % (1 << 62)
        return self._next_id

    def _request(self, kind: str, fields: dict, timeout_ms: float | None) -> dict:
        rid = self._new_id()
        deadline = time.monotonic() + (timeout_ms or self.timeout_ms) / 1e3
        payload = P.pack(RP.request(kind, rid, **fields))
        while True:  # wait for the connection (and the CurveZMQ handshake) up to the deadline
            try:
                self._sock.send(payload, zmq.NOBLOCK)
                break
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stats["timeouts"] += 1
                    raise TimeoutError(f"{kind}: no connection to {self.address} within "
                                       f"{timeout_ms or self.timeout_ms:.0f} ms (server down, or it refused our key)")
                self._sock.poll(max(1, int(min(left, 0.05) * 1e3)), zmq.POLLOUT)
        self.stats["requests"] += 1
        reply = self._await(rid, deadline)
        if reply is None:
            self.stats["timeouts"] += 1
            raise TimeoutError(f"{kind}: no reply from {self.address} within {timeout_ms or self.timeout_ms:.0f} ms")
        if reply.get("kind") == "error":
            raise P.ServerError(str(reply.get("code")), str(reply.get("message")))
        return reply

    def _await(self, rid: int, deadline: float) -> dict | None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self._sock.poll(max(1, int(left * 1e3)), zmq.POLLIN):
                continue
            try:
                reply = P.unpack(self._sock.recv(zmq.NOBLOCK))
            except (zmq.Again, P.ProtocolError):
                continue
            if reply.get("id") == rid:
                return reply
            if reply.get("kind") == "error":
                self.command_errors.append(reply)  # e.g. an unsafe fire-and-forget command
            self.stats["stray_replies"] += 1

    def drain(self) -> None:
        """Read replies that nobody waits for (errors to fire-and-forget commands land in command_errors)."""
        while self._sock.poll(0, zmq.POLLIN):
            try:
                reply = P.unpack(self._sock.recv(zmq.NOBLOCK))
            except (zmq.Again, P.ProtocolError):
                continue
            if reply.get("kind") == "error":
                self.command_errors.append(reply)
            self.stats["stray_replies"] += 1

    def close(self) -> None:
        for s in (self._sock, self._sub):
            if s is not None:
                s.close(0)
        self._sub = None
        if not self._ctx.closed:
            self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RobotServerLost(RuntimeError):
    """The robot server stopped answering (no reply, or no state publication for RemoteRobot.lost_after_s)."""


class RemoteRobot:
    """The ControlLoop's Robot protocol over a robot server.

    sync=True (the loop's sync mode, simulators): apply() waits until the server applied the action, so the next
    get_observation() sees its effect: the same episode as an in-process env. sync=False (hardware, async loop):
    apply() sends and returns; the server keeps only the newest command.
    instruction: the task for the policy; default the robot's own (a simulator's task), else required.
    lost_after_s: async: no state publication for this long raises RobotServerLost (as does a request's timeout).
    on_override(given, own): called at each reset where `instruction` replaces a different instruction of the robot's
    own (a simulator's drawn task, which it still scores); default: a logged warning.
    """

    def __init__(self, client: RobotClient | str, instruction: str | None = None, sync: bool = False,
                 max_steps: int | None = None, lost_after_s: float = 2.0, on_override=None, **client_kw):
        self.client = client if isinstance(client, RobotClient) else RobotClient(client, **client_kw)
        self.lost_after_s = float(lost_after_s)
        self.meta = self.client.metadata or self.client.hello()
        self.instruction = instruction
        self.on_override = on_override or (lambda given, own: logging.getLogger("robot_bridge.robot_client").warning(
            "instruction %r replaces the robot's own %r, which it still scores", given, own))
        self.own_instruction: str | None = None  # the robot's own instruction at the last reset
        self.sync = sync
        self._max_steps = max_steps
        self.done = False
        self.success = False
        self.steps = 0
        self.applied: list[np.ndarray] = []  # sync: the actions the server applied (after safety)
        self.drops: dict[str, int] = {}

    @property
    def horizon(self) -> int:
        return int(self._max_steps or self.meta.get("horizon") or 1000)

    def _obs(self, reply: dict) -> dict:
        instr = self.instruction or reply.get("instruction")
        if not instr:
            raise ValueError("instruction: the robot has no task of its own; give RemoteRobot(instruction=...) "
                             "(`vla run --instruction`)")
        st = reply.get("status") or {}
        self.done = bool(st.get("done", False))
        self.success = bool(st.get("success", False))
        return {"images": reply["images"], "state": np.asarray(reply["state"], np.float32), "instruction": instr}

    def _call(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except TimeoutError as e:
            raise RobotServerLost(f"robot server at {self.client.address}: {e}") from e

    def reset(self, seed: int | None = None) -> dict:
        self.steps = 0
        self.applied.clear()
        reply = self._call(self.client.reset, seed=seed)
        self.own_instruction = reply.get("instruction")
        if self.instruction and self.own_instruction and self.instruction.strip() != self.own_instruction.strip():
            self.on_override(self.instruction, self.own_instruction)
        return self._obs(reply)

    def get_observation(self) -> dict:
        return self._obs(self._call(self.client.observe))

    def apply(self, action: np.ndarray) -> None:
        self.steps += 1
        if not self.sync:
            self.client.send_command(action)
            self.client.drain()
            st = self.client.latest_state()
            seen = self.client.last_state_at
            if seen is not None and time.monotonic() - seen > self.lost_after_s:
                raise RobotServerLost(f"robot server at {self.client.address}: no state publication for "
                                      f"{time.monotonic() - seen:.1f} s")
            if st is not None:
                self.success = bool(st.get("success", False))
                self.done = bool(st.get("done", False)) or st.get("mode") in ("estopped", "fault")
            return
        reply = self._call(self.client.command, action)
        st = reply.get("status") or {}
        self.done, self.success = bool(st.get("done", False)), bool(st.get("success", False))
        if reply["kind"] == "applied":
            self.applied.append(np.asarray(reply["action"], np.float32))
        else:
            self.drops[reply.get("reason", "?")] = self.drops.get(reply.get("reason", "?"), 0) + 1
            if reply.get("reason") in ("estopped", "fault"):
                self.done = True  # the arm will not move until someone releases it: end the episode

    def close(self) -> None:
        self.client.close()
