"""openpi's websocket policy protocol (PyPI `openpi-client` 0.1.2) in front of the same batching worker.

On connect: one binary msgpack frame with the metadata. Then binary msgpack request -> reply frames; arrays in
openpi's layout with bin keys (b"__ndarray__", ...), which is what its client reads. Reply: {"actions": (H, D),
"server_timing": {...}, "policy_timing": {...}}. A map with a "__ctrl__" key is acknowledged, not run. An error
is a text frame "error <code>: <message>" followed by close code 1011 (openpi's convention). `GET /healthz`
answers 200. Inference runs on the batching worker, so the event loop keeps answering pings meanwhile.

Observation keys (docs/PROTOCOL.md): our schema {"images": {cam: ...}, "state", "instruction" | "prompt"}, or
openpi's flat keys: observation/image -> agentview, observation/wrist_image -> wrist, observation/images/<cam>
-> <cam>, observation/state -> state, prompt -> instruction. Images uint8 HWC (CHW is transposed).
"""

from __future__ import annotations

import asyncio
import http
import logging
import threading
import time

import numpy as np

from robot_bridge import protocol as P
from robot_bridge.serving.batcher import Batcher, Job

log = logging.getLogger("robot_bridge.openpi")

IMAGE_KEYS = {  # our camera -> openpi keys tried in order (after observation/images/<cam>)
    "agentview": ("observation/image", "observation/exterior_image_1_left", "image"),
    "wrist": ("observation/wrist_image", "observation/wrist_image_left", "wrist_image"),
}
STATE_KEYS = ("observation/state", "state")
PROMPT_KEYS = ("prompt", "instruction")


def _str_keys(d: dict) -> dict:
    return {(k.decode("utf-8", "replace") if isinstance(k, bytes) else k): v for k, v in d.items()}


def openpi_to_obs(msg: dict, spec: P.ObsSpec) -> dict:
    """An openpi request map -> our observation (validated; ProtocolError names the missing or bad key)."""
    msg = _str_keys(msg)
    if isinstance(msg.get("images"), dict) and not P.is_array_map(msg["images"]):
        images = _str_keys(msg["images"])
        raw = {cam: images.get(cam) for cam in spec.cameras}
        where = {cam: f"images.{cam}" for cam in spec.cameras}
    else:
        raw, where = {}, {}
        for cam in spec.cameras:
            for key in (f"observation/images/{cam}",) + IMAGE_KEYS.get(cam, ()):
                if key in msg:
                    raw[cam], where[cam] = msg[key], key
                    break
            else:
                raw[cam] = None
                where[cam] = " or ".join((f"observation/images/{cam}",) + IMAGE_KEYS.get(cam, ()))
    side = spec.max_image_side
    out = {}
    for cam in spec.cameras:
        if raw[cam] is None:
            raise P.ProtocolError(P.ErrorCode.MISSING_FIELD, f"{where[cam]}: required (camera {cam!r})")
        im = P.decode_array(raw[cam], where[cam], dtypes=("|u1",), ndim=3, max_bytes=side * side * 3)
        if im.shape[2] != 3 and im.shape[0] == 3:
            im = np.ascontiguousarray(im.transpose(1, 2, 0))  # CHW -> HWC
        if im.shape[2] != 3 or not (1 <= im.shape[0] <= side and 1 <= im.shape[1] <= side):
            raise P.ProtocolError(P.ErrorCode.BAD_FIELD, f"{where[cam]}: expected uint8 (H, W, 3) or (3, H, W) with "
                                                         f"sides 1..{side}, got {im.shape}")
        out[cam] = im
    skey = next((k for k in STATE_KEYS if k in msg), None)
    if skey is None:
        raise P.ProtocolError(P.ErrorCode.MISSING_FIELD, f"{' or '.join(STATE_KEYS)}: required")
    state = P.as_model_floats(P.decode_array(msg[skey], skey, dtypes=("<f4", "<f8"), ndim=1, shape=(spec.state_dim,)),
                              skey)
    pkey = next((k for k in PROMPT_KEYS if k in msg), None)
    if pkey is None:
        raise P.ProtocolError(P.ErrorCode.MISSING_FIELD, f"{' or '.join(PROMPT_KEYS)}: required")
    prompt = msg[pkey]
    if isinstance(prompt, bytes):
        prompt = prompt.decode("utf-8", "replace")
    if not isinstance(prompt, str) or len(prompt) > spec.max_instruction_chars:
        raise P.ProtocolError(P.ErrorCode.BAD_FIELD,
                              f"{pkey}: expected a str of at most {spec.max_instruction_chars} characters")
    obs = {"images": out, "state": state, "instruction": prompt}
    if msg.get("prefix_actions") is not None:  # optional: real-time chunking (docs/PROTOCOL.md)
        obs["prefix_actions"] = P.parse_prefix_actions(msg["prefix_actions"], spec)
    return obs


class OpenPIServer:
    """Websocket front end; shares `batcher` (and so batching) with the ZeroMQ server."""

    def __init__(self, batcher: Batcher, metadata: dict, spec: P.ObsSpec, host: str = "127.0.0.1", port: int = 8000,
                 max_message_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES, max_inflight_bytes: int | None = None):
        """max_inflight_bytes: request bytes held at once over all connections (received, not yet answered); a
        request past it is refused OVERLOADED and dropped. Default: 2 x max_message_bytes."""
        self.batcher = batcher
        self.metadata = metadata
        self.spec = spec
        self.host = host
        self.port = int(port)
        self.max_message_bytes = max_message_bytes
        self.max_inflight_bytes = int(max_inflight_bytes or 2 * max_message_bytes)
        self.inflight_bytes = 0  # touched only on the event loop's thread
        self._prev_total_ms: dict[int, float] = {}  # connection -> its previous request's server time
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_ev: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.counts = {"requests": 0, "errors": 0, "ctrl": 0, "overloaded": 0}

    def start(self) -> "OpenPIServer":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="openpi-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0) or self._error is not None:
            raise RuntimeError(f"openpi server could not listen on {self.host}:{self.port}: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop_ev is not None and self._thread is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop_ev.set)
            except RuntimeError:
                pass  # loop already closed
            self._thread.join(10.0)
        self._thread = None

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop_ev = asyncio.Event()
        try:
            # max_queue=1: a connection buffers at most one message beyond the one being handled
            server = await serve(self._handler, self.host, self.port, compression=None, max_size=self.max_message_bytes,
                                 max_queue=1, process_request=_health_check)
        except OSError as e:
            self._error = e
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop_ev.wait()
        finally:
            server.close()
            await server.wait_closed()

    async def _handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await ws.send(P.pack(self.metadata, bin_keys=True))
            while True:
                data = await ws.recv()
                t_recv = time.perf_counter()
                self.counts["requests"] += 1
                n = len(data)
                if self.inflight_bytes + n > self.max_inflight_bytes:
                    self.counts["overloaded"] += 1
                    del data
                    return await self._fail(ws, P.ErrorCode.OVERLOADED,
                                            f"{self.inflight_bytes + n} request bytes in flight would exceed the "
                                            f"server's limit of {self.max_inflight_bytes}; retry later")
                self.inflight_bytes += n
                try:
                    if not await self._answer(ws, data, t_recv):
                        return
                finally:
                    self.inflight_bytes -= n
        except ConnectionClosed:
            return
        except Exception as e:  # noqa: BLE001 - one bad connection never takes the server down
            log.exception("openpi connection failed")
            await self._fail(ws, P.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
        finally:
            self._prev_total_ms.pop(id(ws), None)

    async def _answer(self, ws, data, t_recv: float) -> bool:
        """One request -> one reply; False when the connection was failed (and closed)."""
        try:
            if isinstance(data, str):
                raise P.ProtocolError(P.ErrorCode.BAD_MESSAGE, "expected a binary msgpack frame, got text")
            msg = _str_keys(P.unpack(data, self.max_message_bytes))
            if "__ctrl__" in msg:
                self.counts["ctrl"] += 1
                ctrl = msg["__ctrl__"]
                ack = ctrl if isinstance(ctrl, (str, int, float, bool)) or ctrl is None else str(type(ctrl).__name__)
                await ws.send(P.pack({"__ctrl__": ack, "ok": True}, bin_keys=True))
                return True
            obs = openpi_to_obs(msg, self.spec)
        except P.ProtocolError as e:
            await self._fail(ws, e.code, e.message)
            return False
        res, err = await self._infer(obs, t_recv, client=id(ws))
        if err is not None:
            await self._fail(ws, *err)
            return False
        total_ms = (time.perf_counter() - t_recv) * 1e3
        t = res["timing"]
        server_timing = {"infer_ms": t["model_ms"], "queue_ms": t["queue_ms"], "server_ms": total_ms,
                         "batch": t["batch"]}
        prev = self._prev_total_ms.get(id(ws))
        if prev is not None:
            server_timing["prev_total_ms"] = prev
        reply = {"actions": res["actions"], "server_timing": server_timing,
                 "policy_timing": {"infer_ms": t["model_ms"], "nfe": t["nfe"]}}
        await ws.send(P.pack(reply, bin_keys=True))
        self._prev_total_ms[id(ws)] = total_ms
        return True

    async def _infer(self, obs: dict, t_recv: float, client=None):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def on_done(res, err):  # worker thread
            def settle():
                if not fut.done():
                    fut.set_result((res, err))

            loop.call_soon_threadsafe(settle)

        if not self.batcher.submit(Job(kind="infer", on_done=on_done, obs=obs, t_recv=t_recv, client=client)):
            return None, (P.ErrorCode.OVERLOADED, f"inference queue full ({self.batcher.pending} waiting)")
        return await fut

    async def _fail(self, ws, code: str, message: str) -> None:
        self.counts["errors"] += 1
        try:
            await ws.send(f"error {code}: {message}")
            await ws.close(code=1011, reason=f"{code}"[:120])
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass


def _health_check(connection, request):
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None
