"""Dynamic batching worker: one thread owns the policy; requests from any front end (ZeroMQ, websocket) queue here.

A batch starts with the oldest waiting request and takes whatever else is queued, up to `max_batch`; then one
`policy.infer_batch` call answers all of them. It waits (at most `max_wait_ms`) for more only while a client that
sent a request in the last `active_window_s` is missing from the batch: a lone client never waits for partners
that will not come (a fixed wait cost every single-client request the whole `max_wait_ms`). Control jobs (reset)
run alone, in arrival order, between batches.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("robot_bridge.serving.server")


@dataclass
class Job:
    """One unit of work. on_done(result, error) is called exactly once, from the worker thread.

    result for "infer": {"actions": float32 (H, D), "timing": {...}}; for "reset": {}.
    error: (code, message) or None.
    """

    kind: str  # "infer" | "reset"
    on_done: Callable[[dict | None, tuple[str, str] | None], None]
    obs: dict | None = None
    t_recv: float = field(default_factory=time.perf_counter)
    tag: dict = field(default_factory=dict)  # ids for the timing log
    client: object = None  # who sent it (ZeroMQ identity, websocket connection); None: anonymous, never waited for


class Batcher:
    def __init__(self, policy, max_batch: int = 8, max_wait_ms: float = 2.0, max_queue: int = 256,
                 active_window_s: float = 1.0):
        if max_batch < 1:
            raise ValueError(f"max_batch: expected >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms: expected >= 0, got {max_wait_ms}")
        if active_window_s < 0:
            raise ValueError(f"active_window_s: expected >= 0, got {active_window_s}")
        self.policy = policy
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1e3
        self.active_window_s = float(active_window_s)
        self._last_seen: dict = {}  # client -> perf_counter of its last request
        self.waits = 0  # batches that waited for a missing active client
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=100_000)
        self.failures = 0
        self.retried_batches = 0  # batches that failed and were re-run request by request
        self.suspect_s = 10.0
        self._suspects: dict = {}  # client -> time.monotonic() its request last failed alone

    # ----- lifecycle -----
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="policy-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            if self._thread is not None:
                self._thread.join(timeout)
                self._thread = None
            self._drain("server stopping")

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full or the worker is stopping (the caller answers OVERLOADED)."""
        if self._stopping.is_set():
            return False
        if job.client is not None and job.kind == "infer":
            self._last_seen[job.client] = job.t_recv
        try:
            self._q.put_nowait(job)
            return True
        except queue.Full:
            return False

    @property
    def pending(self) -> int:
        return self._q.qsize()

    # ----- worker -----
    def _run(self) -> None:
        carry: Job | None = None
        while not self._stopping.is_set():
            job = carry
            carry = None
            if job is None:
                try:
                    job = self._q.get(timeout=0.05)
                except queue.Empty:
                    continue
            if job.kind != "infer":
                self._control(job)
                continue
            batch = [job]
            deadline = time.perf_counter() + self.max_wait_s
            waited = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    left = deadline - time.perf_counter()
                    if left <= 0 or not self._expect_more(batch):
                        break
                    waited = True
                    try:
                        nxt = self._q.get(timeout=left)
                    except queue.Empty:
                        break
                if nxt.kind != "infer":
                    carry = nxt  # control jobs keep their place: after this batch
                    break
                batch.append(nxt)
            self.waits += waited
            self._infer(batch)
        if carry is not None:
            _finish(carry, None, ("shutting_down", "server stopping"))
        self._drain("server stopping")

    def _expect_more(self, batch: list[Job]) -> bool:
        """True when a client seen in the last active_window_s has no request in `batch` (it may send one soon)."""
        now = time.perf_counter()
        seen = list(self._last_seen.items())  # the socket thread adds entries meanwhile
        if len(seen) > 4096:  # forget clients long gone
            for c, t in seen:
                if now - t > self.active_window_s:
                    self._last_seen.pop(c, None)
        present = {j.client for j in batch}
        return any(now - t <= self.active_window_s and c not in present for c, t in seen)

    def _control(self, job: Job) -> None:
        try:
            if job.kind == "reset":
                self.policy.reset()
                _finish(job, {}, None)
            else:
                _finish(job, None, ("internal", f"unknown job kind {job.kind!r}"))
        except Exception as e:  # noqa: BLE001 - the worker never dies on a request
            log.exception("reset failed")
            _finish(job, None, ("inference_failed", f"{type(e).__name__}: {e}"))

    def _infer(self, batch: list[Job]) -> None:
        """One forward for the batch. If it fails, the requests run one by one so good ones still get answers, and a
        client whose request failed alone becomes a suspect: for the next `suspect_s` its requests run apart from the
        batch, so one client's bad requests cost the others one retry at most, not one per request."""
        t0 = time.perf_counter()
        now = time.monotonic()
        suspect = [j.client is not None and now - self._suspects.get(j.client, -1e9) < self.suspect_s for j in batch]
        results: list = [None] * len(batch)
        errors: list = [None] * len(batch)
        main = [i for i, s in enumerate(suspect) if not s]
        if main:
            try:
                out = self.policy.infer_batch([batch[i].obs for i in main])
                for i, r in zip(main, out):
                    results[i] = r
            except Exception as e:  # noqa: BLE001
                if len(main) == 1:
                    errors[main[0]] = _err(e)
                    self._suspect(batch[main[0]].client)
                else:  # find the culprit: run one by one so good requests still get answers
                    self.retried_batches += 1
                    for i in main:
                        self._alone(batch, i, results, errors)
        t1 = time.perf_counter()
        self.batch_sizes.append(len(main) or 1)
        self._reply([batch[i] for i in main], [results[i] for i in main], [errors[i] for i in main], t0, t1)
        for i, s in enumerate(suspect):  # after the others have their answers
            if s:
                t0 = time.perf_counter()
                self._alone(batch, i, results, errors)
                self._reply([batch[i]], [results[i]], [errors[i]], t0, time.perf_counter())

    def _reply(self, jobs: list[Job], results: list, errors: list, t0: float, t1: float) -> None:
        for j, r, err in zip(jobs, results, errors):
            if err is not None:
                self.failures += 1
                _finish(j, None, err)
                continue
            pt = r.get("timing", {})
            timing = {
                "queue_ms": (t0 - j.t_recv) * 1e3,
                "model_ms": float(pt.get("model_ms", (t1 - t0) * 1e3)),
                "infer_ms": (t1 - t0) * 1e3,
                "prefix_ms": float(pt.get("prefix_ms", 0.0)),
                "decode_ms": float(pt.get("decode_ms", 0.0)),
                "nfe": int(pt.get("nfe", 0)),
                "batch": len(jobs),
            }
            _finish(j, {"actions": r["actions"], "timing": timing}, None)

    def _alone(self, batch: list[Job], i: int, results: list, errors: list) -> None:
        try:
            results[i] = self.policy.infer_batch([batch[i].obs])[0]
            self._suspects.pop(batch[i].client, None)
        except Exception as e:  # noqa: BLE001
            errors[i] = _err(e)
            self._suspect(batch[i].client)

    def _suspect(self, client) -> None:
        if client is not None:
            if len(self._suspects) > 4096:
                self._suspects.clear()
            self._suspects[client] = time.monotonic()

    def _drain(self, why: str) -> None:
        while True:
            try:
                job = self._q.get_nowait()
            except queue.Empty:
                return
            _finish(job, None, ("shutting_down", why))


def _err(e: Exception) -> tuple[str, str]:
    # ValueError from the policy's own input checks names the offending key
    code = "bad_field" if isinstance(e, ValueError) else "inference_failed"
    if code == "inference_failed":
        log.exception("inference failed")
    return code, f"{type(e).__name__}: {e}"[:500]


def _finish(job: Job, result, error) -> None:
    try:
        job.on_done(result, error)
    except Exception:  # noqa: BLE001 - a broken callback must not kill the worker
        log.exception("reply callback failed")
