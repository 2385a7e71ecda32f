"""Robot-side client of the policy server. Imports only numpy, msgpack and pyzmq (no torch).

    client = PolicyClient("tcp://127.0.0.1:5555", timeout_ms=2000, retries=2)
    meta = client.hello()                       # cameras, chunk length, action dim, ...
    out = client.infer(obs, episode_id=3, step=40)
    out["actions"]                              # float32 (H, D)

Lazy-pirate reliability: a DEALER socket; on a timeout the socket is closed (dropping whatever the old one
would still receive) and a fresh one resends, up to `retries` times; every call is bounded in time. Replies
are matched by request id: a reply to an older request, or one that arrives after its deadline, is discarded.
Usable as a policy for `sim.evaluate.rollout` (reset() / infer(obs)). Not thread-safe: one thread per client.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
import zmq

from robot_bridge import protocol as P

RETRYABLE = (P.ErrorCode.OVERLOADED, P.ErrorCode.SHUTTING_DOWN)
_WORD_RE = re.compile(r"[a-z0-9]+")  # vla.tokenizers.WordTokenizer's words, punctuation aside


class PolicyServerLost(ConnectionError):
    """The policy server did not answer the handshake, or stopped answering during a run; the message names the
    address and what to do."""


def no_answer(address: str, err, during: str | None = None) -> PolicyServerLost:
    """The one message for a policy server that is not there (during=None: at the handshake) or went away."""
    if during is None:
        return PolicyServerLost(f"policy server at {address} did not answer ({err}); is `vla serve` running there?")
    return PolicyServerLost(f"policy server at {address} stopped answering {during} ({err}); is `vla serve` still "
                            f"running there? Restart it (or check the address) and rerun")


def policy_warnings(meta: dict, instruction: str | None = None, task: str | None = None) -> list[str]:
    """What a policy's handshake (or Policy.metadata) says it cannot do: an instruction with words outside its
    vocabulary (read as <unk>), a task it was never trained on. Empty when it says nothing about either."""
    def field(key):
        v = meta.get(key)
        return v if v is not None else (meta.get("policy") or {}).get(key)

    out = []
    vocab, tasks = field("vocabulary"), field("tasks")
    if instruction and isinstance(vocab, list) and vocab:
        known = set(vocab)
        unknown = [w for w in dict.fromkeys(_WORD_RE.findall(instruction.lower())) if w not in known]
        if unknown:
            out.append(f"instruction {instruction!r}: the policy never saw the word(s) {', '.join(map(repr, unknown))} "
                       f"(read as unknown); it knows {len(vocab)} words, e.g. {', '.join(vocab[:12])}")
    if task and isinstance(tasks, list) and tasks and task not in tasks:
        out.append(f"the policy was trained on {', '.join(tasks)} only, not {task}: expect it to fail there")
    return out


class PolicyClient:
    def __init__(self, address: str = "tcp://127.0.0.1:5555", timeout_ms: float = 5000.0, retries: int = 2,
                 max_message_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES, client_secret_key: str | None = None,
                 server_public_key: str | None = None):
        """client_secret_key / server_public_key: CurveZMQ key files (robot_bridge/security.py) for a server
        started with --server-key; both or neither."""
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms: expected > 0, got {timeout_ms}")
        if retries < 0:
            raise ValueError(f"retries: expected >= 0, got {retries}")
        self.address = address
        self.timeout_ms = float(timeout_ms)
        self.retries = int(retries)
        self.max_message_bytes = int(max_message_bytes)
        from robot_bridge.security import ClientKeys

        self._keys = ClientKeys.from_args(client_secret_key, server_public_key)
        self._ctx = zmq.Context()
        self._sock: zmq.Socket | None = None
        self._next_id = int.from_bytes(os.urandom(4), "little")  # ids from a fresh client never collide with old ones
        self._metadata: dict | None = None
        self.episode_id = 0
        self.stats = {"requests": 0, "timeouts": 0, "reconnects": 0, "discarded_replies": 0, "server_errors": 0}

    # ----- public API -----
    def hello(self, timeout_ms: float | None = None) -> dict:
        """Handshake: the server's metadata (protocol_version, model, action_dim, chunk_size, cameras, state_dim...)."""
        reply = self._request("hello", {}, timeout_ms)
        meta = reply.get("metadata")
        if not isinstance(meta, dict) or meta.get("protocol_version") != P.PROTOCOL_VERSION:
            raise P.ProtocolError(P.ErrorCode.VERSION_MISMATCH,
                                  "server speaks protocol "
                                  f"{meta.get('protocol_version') if isinstance(meta, dict) else '?'}, "
                                  f"this client {P.PROTOCOL_VERSION}")
        self._metadata = meta
        return meta

    @property
    def metadata(self) -> dict:
        if self._metadata is None:
            self.hello()
        return self._metadata

    def infer(self, obs: dict, episode_id: int | str | None = None, step: int | None = None,
              timeout_ms: float | None = None, deadline: float | None = None) -> dict:
        """obs -> {"actions": float32 (H, D), "timing": {...server timings, rtt_ms}, "id", "episode_id", "step"}.

        deadline: absolute time.monotonic() after which no reply is accepted (TimeoutError instead).
        """
        fields = P.obs_fields(obs)
        fields.update(episode_id=self.episode_id if episode_id is None else episode_id, step=step,
                      client_time=time.time())
        t0 = time.perf_counter()
        reply = self._request("infer", fields, timeout_ms, deadline)
        rtt_ms = (time.perf_counter() - t0) * 1e3
        actions = P.decode_arrays(reply.get("actions"))
        if not isinstance(actions, np.ndarray) or actions.ndim != 2 or actions.dtype != np.float32:
            raise P.ProtocolError(P.ErrorCode.BAD_FIELD,
                                  f"reply actions: expected float32 (H, D), got {P._describe(actions)}")
        timing = dict(reply.get("timing") or {})
        timing["rtt_ms"] = rtt_ms
        timing["transport_ms"] = rtt_ms - float(timing.get("server_ms", 0.0))
        return {"actions": actions, "timing": timing, "id": reply.get("id"), "episode_id": reply.get("episode_id"),
                "step": reply.get("step")}

    def reset(self, timeout_ms: float | None = None) -> None:
        """Start a new episode: the server resets the policy (its sampling generator; decoding state)."""
        self.episode_id += 1
        self._request("reset", {"episode_id": self.episode_id}, timeout_ms)

    def close(self) -> None:
        self._drop_socket()
        if not self._ctx.closed:
            self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----- transport -----
    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            if self._keys is not None:
                self._keys.secure(s)
            s.connect(self.address)
            self._sock = s
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)  # anything the old socket would still receive is gone with it
            self._sock = None

    def _request(self, kind: str, fields: dict, timeout_ms: float | None = None, deadline: float | None = None) -> dict:
        per_try = (timeout_ms or self.timeout_ms) / 1e3
        last_err = None
        for attempt in range(self.retries + 1):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            try_deadline = now + per_try if deadline is None else min(now + per_try, deadline)
            rid = self._next_id = (self._next_id + 1) % (1 << 62)
            payload = P.pack(P.make_request(kind, rid, **fields))
            if len(payload) > self.max_message_bytes:
                raise ValueError(f"{kind} request of {len(payload)} bytes exceeds "
                                 f"max_message_bytes {self.max_message_bytes}")
            self.stats["requests"] += 1
            try:
                self._socket().send(payload, zmq.NOBLOCK)
            except zmq.Again:  # nothing connected and the queue is full: count as a timeout
                pass
            reply = self._await(rid, try_deadline)
            if reply is None:
                self.stats["timeouts"] += 1
                self.stats["reconnects"] += 1
                self._drop_socket()
                last_err = "timeout"
                continue
            if reply.get("kind") == "error":
                self.stats["server_errors"] += 1
                code, msg = str(reply.get("code")), str(reply.get("message"))
                if code in RETRYABLE and attempt < self.retries:
                    last_err = code
                    time.sleep(min(0.05, max(0.0, try_deadline - time.monotonic())))
                    continue
                raise P.ServerError(code, msg)
            return reply
        raise TimeoutError(f"{kind}: no reply from {self.address} after {attempt + 1} attempt(s) of "
                           f"{per_try * 1e3:.0f} ms ({last_err or 'deadline passed'})")

    def _await(self, rid: int, deadline: float) -> dict | None:
        sock = self._socket()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not sock.poll(max(1, int(left * 1e3) + 1), zmq.POLLIN):
                continue
            data = sock.recv()
            if time.monotonic() > deadline:
                self.stats["discarded_replies"] += 1  # arrived after its deadline: never used
                return None
            try:
                reply = P.unpack(data, self.max_message_bytes)
            except P.ProtocolError:
                self.stats["discarded_replies"] += 1
                continue
            if reply.get("id") != rid:
                self.stats["discarded_replies"] += 1  # a late answer to an earlier request
                continue
            return reply
