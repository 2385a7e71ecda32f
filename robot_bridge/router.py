"""The ZeroMQ ROUTER plumbing both servers share (`PolicyServer`, `RobotServer`); each keeps its own request handling.

`RouterCore` owns the context, the optional CurveZMQ authenticator, the bound ROUTER socket, the reply outbox and a
wake-up pipe. Only the server's socket thread touches the socket (open, poll, incoming, send, error, flush, close);
any other thread hands a finished reply over with post(), which queues it and writes to the pipe polled next to the
socket, so no ZeroMQ socket is ever used by two threads. Its counters (received, replied, error:<code>, and the
server's name for a reply that could not be sent) are the server's `counts`.

`BadSenders` mutes a client that floods invalid requests (used by `PolicyServer`).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator

import zmq

from robot_bridge import protocol as P

# how many messages one poll reads before replies get their turn again, so replies interleave with a flood of requests
RECV_BATCH = 256


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], bytes | None, str | None]:
    """(envelope, payload, None) for a ROUTER message: [identity, payload] from a DEALER, [identity, b"", payload] from
    a REQ socket. Anything else gives (the envelope to answer on, None, what is wrong)."""
    if len(frames) == 2:
        return frames[:1], frames[1], None
    if len(frames) == 3 and frames[1] == b"":
        return frames[:2], frames[2], None
    env = frames[:2] if len(frames) > 1 and frames[1] == b"" else frames[:1]
    return env, None, f"expected one payload frame, got {len(frames) - len(env)}"


class RouterCore:
    """One ROUTER socket served from one thread.

    core = RouterCore(log); core.open(bind, max_message_bytes, keys)   # on the socket thread
    while running: if core.poll(timeout_ms): for frames in core.incoming(): handle(frames)
    core.flush(); core.close()
    """

    def __init__(self, log: logging.Logger, error_reply: Callable[..., dict] = P.error_reply,
                 dropped_key: str = "dropped"):
        self.log = log  # the server's logger: error replies are logged under the server's name
        self.error_reply = error_reply  # (code, message, rid) -> the protocol's error message
        self.dropped_key = dropped_key  # counter for a reply ZeroMQ would not take (peer gone, its queue full)
        self.counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()  # counts are bumped from the socket thread and from worker threads
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.ctx: zmq.Context | None = None
        self.sock: zmq.Socket | None = None
        self.auth = None  # robot_bridge.security.ServerAuth with CurveZMQ keys
        self.address: str | None = None
        self._poller: zmq.Poller | None = None

    # ----- socket thread -----
    def open(self, bind: str, max_message_bytes: int, keys=None, hwm: int | None = None) -> str:
        """Create the context, the authenticator (keys: a security.ServerKeys, or None) and the ROUTER socket, bind it
        and return the bound address. On failure whatever was made is closed and the exception propagates."""
        self.ctx = zmq.Context()
        try:
            if keys is not None:  # CurveZMQ: encryption, and only allow-listed client keys get through
                from robot_bridge.security import ServerAuth

                self.auth = ServerAuth(self.ctx, keys)
            self.sock = self.ctx.socket(zmq.ROUTER)
            self.secure(self.sock)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)  # larger frames drop the peer
            if hwm is not None:
                self.sock.setsockopt(zmq.RCVHWM, hwm)
                self.sock.setsockopt(zmq.SNDHWM, hwm)
            self.sock.bind(bind)
            self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            self.close()
            raise
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        return self.address

    def secure(self, sock: zmq.Socket) -> None:
        """Make `sock` (this one, or another socket of the server's on self.ctx) a Curve server when keys were given;
        call before bind()."""
        if self.auth is not None:
            self.auth.secure(sock)

    def close(self) -> None:
        """Close the ROUTER socket, stop the authenticator, end the context. The server closes its other sockets on
        self.ctx first."""
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
        if self.auth is not None:
            self.auth.stop()
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None

    def poll(self, timeout_ms: int) -> bool:
        """Wait up to timeout_ms for a request or a wake-up, then send what other threads posted. True when requests
        wait to be read."""
        events = dict(self._poller.poll(timeout_ms))
        if events.get(self._wake_r):
            try:
                os.read(self._wake_r, 65536)
            except BlockingIOError:
                pass
        self.flush()
        return bool(events.get(self.sock))

    def incoming(self, copy: bool = True) -> Iterator[list]:
        """The waiting messages, read one at a time as the caller asks, at most RECV_BATCH of them. copy=False gives
        zmq.Frame objects (their properties carry the CurveZMQ User-Id)."""
        for _ in range(RECV_BATCH):
            try:
                yield self.sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                return

    def flush(self) -> None:
        """Send every reply other threads posted."""
        while True:
            try:
                frames = self._outbox.get_nowait()
            except queue.Empty:
                return
            self.send_frames(frames)

    def send_frames(self, frames: list[bytes]) -> None:
        """Never blocks: a reply ZeroMQ will not take is counted and dropped (the client times out and retries)."""
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
            self.count("replied")
        except zmq.ZMQError:
            self.count(self.dropped_key)

    def send(self, envelope: list[bytes], reply: dict) -> None:
        self.send_frames(envelope + [P.pack(reply)])

    def error(self, envelope: list[bytes], code: str, message: str, rid=None) -> None:
        """Answer with an error reply, counted as error:<code>."""
        self.count(f"error:{code}")
        self.log.debug("error %s: %s", code, message)
        self.send(envelope, self.error_reply(code, message, rid))

    def internal(self, envelope: list[bytes], e: BaseException, rid=None) -> None:
        """An unexpected exception while handling a message: an INTERNAL error reply naming it, the server lives on."""
        self.error(envelope, P.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"[:300], rid)

    # ----- any thread -----
    def count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def post(self, frames: list[bytes]) -> None:
        """From another thread: queue a finished reply (envelope + packed payload) and wake the socket thread."""
        self._outbox.put(frames)
        self.wake()

    def wake(self) -> None:
        """Make the socket thread's poll return (to flush, or to see that it should stop)."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def __del__(self):
        for fd in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


class BadSenders:
    """Mutes a client (ZeroMQ identity) with more than max_per_s invalid requests in one second for mute_s: its
    messages are then dropped unread (no parsing, no reply), so a flood of bad requests costs the others nothing.
    Socket thread only."""

    def __init__(self, core: RouterCore, max_per_s: int, mute_s: float):
        self.core, self.max_per_s, self.mute_s = core, max_per_s, mute_s
        self._bad: dict[bytes, collections.deque] = {}  # identity -> times of its recent invalid requests
        self._muted: dict[bytes, float] = {}  # identity -> time.monotonic() until which it is muted

    def muted(self, who: bytes) -> bool:
        until = self._muted.get(who)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._muted[who]
        return False

    def note(self, who: bytes) -> None:
        """One invalid request from `who`."""
        now = time.monotonic()
        if len(self._bad) > 4096:  # bounds the table against a stream of fresh identities
            self._bad.clear()
        q = self._bad.setdefault(who, collections.deque())
        q.append(now)
        while q and now - q[0] > 1.0:
            q.popleft()
        if len(q) > self.max_per_s:
            self._muted[who] = now + self.mute_s
            q.clear()
            self.core.count("mutes")
            self.core.log.warning("client %s: more than %d invalid requests in 1 s: its messages are dropped unread "
                                  "for %.1f s", who.hex()[:16], self.max_per_s, self.mute_s)
