"""Fixed-rate control loop: an action queue fed by asynchronous chunk requests.

Async mode (robots, latency studies): every 1/rate s one action is applied. When fewer than `request_below`
actions remain, the next chunk is requested from a background thread with the current observation and its
step s; the chunk it returns covers steps s, s+1, ...: on arrival at step t the actions for steps < t are
dropped (alignment by request step), the rest replace (or blend into) the queue. A reply after its deadline
(step s + H - 1, when its last action was due) is discarded. By default the loop asks when the queue holds
fewer actions than `latency_margin` (2) times the slowest of the last 20 requests covers (plus one), at
least half a chunk; each request counts from the start of its observation (camera capture, rendering) to the
chunk's arrival, since the queue must cover both; the history carries over between episodes. With a chunk of H
steps and L-step latencies, a request made as the previous chunk lands survives until L_prev + L_next > H, where
one made just in time starves as soon as one L exceeds the margin it was given. An empty queue when an action is
due is a starvation event: the loop applies a hold action (zero arm deltas, gripper kept; or all
zeros) for at most `starvation_hold_s` (None: for as long as it lasts, what an in-process simulator needs, whose
time moves only with actions), then stops commanding: a robot server's watchdog then holds the arm, and its state
says so. A queue that stays empty for `policy_lost_s` is a policy outage: logged once with the last request error,
counted, and the loop keeps retrying; the next chunk resumes commanding. One that stays empty for `give_up_s` (when
set) ends the episode with `stats.policy_lost`, as does an outage still open at the episode's end.

Sync mode (exact evaluation): request a chunk, apply `replan_every` actions, repeat; no clock, no threads, so the
same policy and seed give the same actions. This is the one episode runner: local evaluation (`sim.evaluate.rollout`,
an in-process policy), remote evaluation and `vla run --mode sync` all run it. With blend "ensemble" every step
applies the temporal ensemble of the chunks that cover it (robot_bridge.ensemble), in both modes.

The loop knows nothing about simulators: a robot is anything with `get_observation()` and `apply(action)`.
"""

from __future__ import annotations

import collections
import inspect
import logging
import math
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

import numpy as np

from robot_bridge.ensemble import TemporalEnsembler, check_coeff

log_ = logging.getLogger("robot_bridge.control_loop")


class Robot(Protocol):
    """What the loop drives. Optional: reset(seed) -> obs, `done` (episode over), `success`, `horizon`."""

    def get_observation(self) -> dict: ...  # {"images": {cam: uint8 (H, W, 3)}, "state": float32 (S,), "instruction"}

    def apply(self, action: np.ndarray) -> None: ...  # float32 (D,)


class EnvRobot:
    """A gymnasium env (e.g. sim.env.VLAEnv) as a Robot: apply() steps the env, done on terminated/truncated.

    An env with `advance(action)` and `observe()` (VLAEnv) is stepped without rendering; its cameras are rendered
    only when the loop asks for an observation (once per chunk request), which is most of a sim step's cost.
    """

    def __init__(self, env):
        self.env = env
        self.obs: dict | None = None
        self.done = False
        self.success = False
        self.steps = 0
        self._lazy = callable(getattr(env, "advance", None)) and callable(getattr(env, "observe", None))
        self._started = False

    @property
    def horizon(self) -> int:
        return int(getattr(self.env, "horizon", 1000))

    @property
    def task(self) -> str | None:
        """The env's task name (sim.env.VLAEnv), recorded with each episode."""
        return getattr(getattr(self.env, "task", None), "name", None)

    def reset(self, seed: int | None = None) -> dict:
        self.obs, _ = self.env.reset(seed=seed)
        self.done, self.success, self.steps, self._started = False, False, 0, True
        return self.obs

    def get_observation(self) -> dict:
        if not self._started:
            raise RuntimeError("EnvRobot: reset() before get_observation()")
        return self.env.observe() if self._lazy else self.obs  # observe(): rendered once per step, then cached

    def apply(self, action: np.ndarray) -> None:
        if self._lazy:
            _, terminated, truncated, _ = self.env.advance(action)
        else:
            self.obs, _, terminated, truncated, _ = self.env.step(action)
        self.steps += 1
        self.success = self.success or bool(terminated)
        self.done = bool(terminated or truncated)


BLENDS = ("auto", "none", "linear", "ensemble", "inpaint")


@dataclass(frozen=True)
class LoopConfig:
    mode: str = "async"  # async | sync
    rate_hz: float = 20.0  # async: control rate
    replan_every: int | None = None  # sync: actions applied per chunk (default: the whole chunk)
    request_below: int | None = None  # async: request when fewer actions remain (default: adaptive, see above)
    latency_margin: float = 2.0  # async, adaptive: cover this many times the slowest recent request latency
    blend: str = "auto"  # how a new chunk takes over (sync mode: only "ensemble" applies). none (it replaces the
    # queue) | linear (cross-fade overlapping steps) | ensemble (ACT temporal ensembling: every step is the weighted
    # mean of all the chunks that predicted it, weights exp(-ensemble_coeff * i), i = 0 the oldest) | inpaint
    # (real-time chunking: the actions that will run before the reply arrives are sent as prefix_actions; the policy
    # decodes the rest of the chunk around them, so the switch is seamless; needs a policy that takes a prefix) | auto
    # (inpaint when the policy takes a prefix, else none)
    ensemble_coeff: float = 0.01  # blend "ensemble": ACT's default (robot_bridge.ensemble.check_coeff: the range)
    inject_delay_ms: float = 0.0  # async: extra latency added to every chunk request (to study delays; 0 = none)
    on_starvation: str = "hold"  # hold: zero arm deltas, last gripper command kept | zero: all-zero action
    hold: str = "zeros"  # what holding means in the action space: "zeros" (delta actions) | "last" (absolute targets:
    # repeat the last action; none before the first)
    gripper_index: int = -1  # which action dimension is the gripper (kept by "hold")
    request_timeout_ms: float = 2000.0  # async: the client gives up (and reconnects) after this
    retry_interval_s: float = 0.1  # async: wait after a failed request before the next
    first_chunk_timeout_s: float = 30.0  # async: wait this long for the first chunk before the clock starts (0: don't)
    starvation_hold_s: float | None = None  # async: hold actions this long on an empty queue, then none (None: always)
    policy_lost_s: float = 1.0  # async: an empty queue this long is a policy outage (logged, counted; retried)
    give_up_s: float | None = None  # async: an empty queue this long ends the episode (stats.policy_lost); None: retry

    def __post_init__(self):
        if self.mode not in ("async", "sync"):
            raise ValueError(f"mode: expected 'async' or 'sync', got {self.mode!r}")
        if not 0.1 <= self.rate_hz <= 1000:
            raise ValueError(f"rate_hz: expected 0.1..1000, got {self.rate_hz}")
        if self.blend not in BLENDS:
            raise ValueError(f"blend: expected one of {list(BLENDS)}, got {self.blend!r}")
        check_coeff(self.ensemble_coeff)
        if not 0.0 <= self.inject_delay_ms <= 60_000:
            raise ValueError(f"inject_delay_ms: expected 0..60000, got {self.inject_delay_ms}")
        if self.hold not in ("zeros", "last"):
            raise ValueError(f"hold: expected 'zeros' (delta actions) or 'last' (absolute targets), got {self.hold!r}")
        if self.on_starvation not in ("hold", "zero"):
            raise ValueError(f"on_starvation: expected 'hold' or 'zero', got {self.on_starvation!r}")
        if not 1.0 <= self.latency_margin <= 10.0:
            raise ValueError(f"latency_margin: expected 1..10, got {self.latency_margin}")
        if self.starvation_hold_s is not None and self.starvation_hold_s < 0:
            raise ValueError(f"starvation_hold_s: expected >= 0 or None, got {self.starvation_hold_s}")
        if not self.policy_lost_s > 0:
            raise ValueError(f"policy_lost_s: expected > 0, got {self.policy_lost_s}")
        if self.give_up_s is not None and not self.give_up_s > 0:
            raise ValueError(f"give_up_s: expected > 0 or None, got {self.give_up_s}")
        for name in ("replan_every", "request_below"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}: expected >= 1 or None, got {v}")


@dataclass
class LoopStats:
    target_period_ms: float = 0.0
    periods_ms: list[float] = field(default_factory=list)  # time between consecutive ticks
    latencies_ms: list[float] = field(default_factory=list)  # chunk request -> reply, successful requests
    chunks: int = 0
    starvation_events: int = 0  # ticks where an action was due and the queue was empty
    stale_dropped: int = 0  # actions dropped because their step had passed when the chunk arrived
    late_discarded: int = 0  # replies discarded: arrived after the step their last action was due
    request_failures: int = 0  # timeouts, server errors, connection trouble
    overruns: int = 0  # ticks that started more than one period late (schedule re-anchored)
    silent_ticks: int = 0  # starved ticks past starvation_hold_s: no command sent (the robot's watchdog holds it)
    policy_outages: int = 0  # times the queue stayed empty for policy_lost_s
    t_first_silent: float | None = None  # time.time() of the first silent tick
    gave_up: bool = False  # the queue stayed empty for give_up_s: the episode ended there
    policy_lost: bool = False  # the episode ended without chunks: gave_up, or an outage was still open at its end
    last_error: str | None = None  # the last failed request's error
    seconds: float = 0.0
    steps: int = 0
    rtc_delay_steps: list[int] = field(default_factory=list)  # inpaint: the delay estimated at each request (steps)
    rtc_prefixes: list[tuple[int, list]] = field(default_factory=list)  # inpaint: (request step, prefix sent)
    blend: str | None = None  # async: the blend that ran (auto resolved to inpaint or none)

    def summary(self) -> dict:
        p = np.asarray(self.periods_ms)
        lat = np.asarray(self.latencies_ms)
        jitter = np.abs(p - self.target_period_ms) if len(p) else p
        return {
            "steps": self.steps,
            "loop_hz": self.steps / self.seconds if self.seconds > 0 else 0.0,  # incl. first chunk and drain
            "tick_hz": 1e3 / float(np.mean(p)) if len(p) else None,  # between the first and the last tick
            "period_ms_p50": float(np.median(p)) if len(p) else None,
            "jitter_ms_p99": float(np.percentile(jitter, 99)) if len(p) else None,
            "latency_ms_p50": float(np.median(lat)) if len(lat) else None,
            "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
            **{k: getattr(self, k) for k in ("chunks", "starvation_events", "stale_dropped", "late_discarded",
                                             "request_failures", "overruns", "silent_ticks", "policy_outages",
                                             "t_first_silent", "gave_up", "policy_lost", "last_error")},
            **({"rtc_delay_steps_mean": float(np.mean(self.rtc_delay_steps))} if self.rtc_delay_steps else {}),
            **({"blend": self.blend} if self.blend else {}),
        }


@dataclass
class EpisodeLog:
    """One episode, however it ran (local or remote evaluation, a robot): outcome, chunk requests, what was applied."""

    success: bool
    length: int  # control steps run
    seed: int | None
    instruction: str
    chunk_ms: list[float] = field(default_factory=list)  # per chunk request: the round trip
    nfe: list[int] = field(default_factory=list)  # per chunk: the decoder's function evaluations
    actions: list[list[float]] | None = None  # per applied action (keep_actions)
    stats: LoopStats = field(default_factory=LoopStats)
    sources: list[int] = field(default_factory=list)  # per applied action: its chunk's request step, -1 = hold
    task: str | None = None  # the simulated task (EnvRobot), None on a robot

    def summary(self) -> dict:
        """The per-episode row evaluation writes (episodes_<task>.jsonl): medians instead of the per-chunk lists."""
        return {"task": self.task, "seed": self.seed, "success": self.success, "length": self.length,
                "instruction": self.instruction,
                "chunk_ms_p50": float(np.median(self.chunk_ms)) if self.chunk_ms else None,
                "nfe_mean": float(np.mean(self.nfe)) if self.nfe else None}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stats"] = self.stats.summary()
        return d


class _Requester:
    """One background thread that runs one chunk request at a time; results land in `results`."""

    def __init__(self, call: Callable):
        self._call = call
        self._job = None
        self._cv = threading.Condition()
        self._closed = False
        self.busy = False
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="chunk-requester", daemon=True)
        self._thread.start()

    def submit(self, job: dict) -> bool:
        with self._cv:
            if self.busy or self._closed:
                return False
            self.busy, self._job = True, job
            self._cv.notify()
            return True

    def wait_idle(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self._cv:
            while self.busy and time.monotonic() < end:
                self._cv.wait(0.01)
            return not self.busy

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                job = self._job
            t0 = time.perf_counter()
            try:
                out, err = self._call(job), None
            except Exception as e:  # noqa: BLE001 - a failed request is an event, not a crash
                out, err = None, e
            self.results.put({**job, "out": out, "error": err, "t_sent": t0, "t_recv": time.perf_counter()})
            with self._cv:
                self._job, self.busy = None, False
                self._cv.notify_all()


@dataclass
class _AsyncRun:
    """What the steps of one async episode share (ControlLoop._run_async)."""

    period: float  # s per control step
    req: _Requester
    inpaint: bool  # requests carry prefix_actions (blend inpaint, or auto with a policy that takes them)
    plan: dict[int, tuple[np.ndarray, int]]  # absolute step -> (action (D,), request step of its chunk)
    chunk_len: int  # the last chunk's length (before any: the policy's chunk_size)
    t_next: float  # perf_counter when the next tick is due
    last: np.ndarray | None = None  # the last action taken from a chunk (what a hold keeps)
    retry_at: float = 0.0  # perf_counter before which no request is made (after a failed one)
    prev_tick: float | None = None  # perf_counter of the previous tick
    starved_since: float | None = None  # perf_counter of the first tick of the current starvation
    outage: bool = False  # the current starvation has lasted policy_lost_s (logged and counted once)


class ControlLoop:
    """Drive `robot` with chunks from `policy` (PolicyClient or any object with infer(obs) and reset())."""

    def __init__(self, policy, robot: Robot, config: LoopConfig | None = None, action_dim: int | None = None):
        self.policy = policy
        self.robot = robot
        self.config = config or LoopConfig()
        self._action_dim = action_dim
        params = inspect.signature(policy.infer).parameters
        self._remote = "step" in params and "timeout_ms" in params  # PolicyClient: ids, timeouts, deadlines
        self._requester: _Requester | None = None
        self._episode = 0
        self._recent_ms: collections.deque = collections.deque(maxlen=20)  # request latencies, across episodes
        self._warned_prefix = False  # blend "inpaint" with a policy that takes no prefix: warned once
        self._ens: TemporalEnsembler | None = None  # async blend "ensemble": the chunks merged this episode

    # ----- helpers -----
    @property
    def action_dim(self) -> int:
        if self._action_dim is None:
            meta = getattr(self.policy, "metadata", None) or {}
            self._action_dim = int(meta.get("action_dim", 7))
        return self._action_dim

    def _infer(self, obs, step, timeout_ms=None, deadline=None) -> dict:
        if self._remote:
            return self.policy.infer(obs, episode_id=self._episode, step=step, timeout_ms=timeout_ms, deadline=deadline)
        return self.policy.infer(obs)

    def _hold(self, last: np.ndarray | None) -> np.ndarray | None:
        """The action that keeps the robot where it is: for absolute targets the last one (None before any)."""
        if self.config.hold == "last":
            return None if last is None else last.copy()
        a = np.zeros(self.action_dim, dtype=np.float32)
        if self.config.on_starvation == "hold" and last is not None:
            a[self.config.gripper_index] = last[self.config.gripper_index]
        return a

    def _reset(self, seed, stats: LoopStats) -> dict:
        obs = self.robot.reset(seed=seed) if hasattr(self.robot, "reset") else self.robot.get_observation()
        self._episode += 1
        try:
            self.policy.reset()
        except Exception:  # noqa: BLE001 - async: a server that is down now may be back for the first chunk
            if self.config.mode == "sync":
                raise  # exact evaluation needs the policy reset
            stats.request_failures += 1
        return obs

    def close(self) -> None:
        if self._requester is not None:
            self._requester.close()
            self._requester = None

    # ----- episodes -----
    def run_episode(self, seed: int | None = None, max_steps: int | None = None, keep_actions: bool = False,
                    on_step: Callable[[int, dict, np.ndarray], None] | None = None) -> EpisodeLog:
        """Reset the robot (if it can) and the policy, run until the robot is done or max_steps actions.

        on_step(step, obs, action) is called right before each action is applied (video frames, logging).
        """
        horizon = int(max_steps or getattr(self.robot, "horizon", 1000))
        stats = LoopStats(target_period_ms=1e3 / self.config.rate_hz)
        obs = self._reset(seed, stats)
        log = EpisodeLog(success=False, length=0, seed=seed, instruction=str(obs.get("instruction", "")),
                         actions=[] if keep_actions else None, stats=stats, task=getattr(self.robot, "task", None))
        run = self._run_sync if self.config.mode == "sync" else self._run_async
        t0 = time.perf_counter()
        run(log, horizon, on_step)
        log.stats.seconds = time.perf_counter() - t0
        log.stats.steps = log.length
        log.success = bool(getattr(self.robot, "success", False))
        return log

    def _record_chunk(self, log: EpisodeLog, out: dict, ms: float, cover_ms: float | None = None) -> None:
        """ms: the request's round trip (logged); cover_ms: what the queue had to cover for it (observation +
        round trip; default ms), the sample the adaptive request threshold uses."""
        log.chunk_ms.append(ms)
        log.nfe.append(int(out.get("timing", {}).get("nfe", 0)))
        log.stats.chunks += 1
        log.stats.latencies_ms.append(ms)
        self._recent_ms.append(ms if cover_ms is None else cover_ms)

    def _apply(self, log: EpisodeLog, t: int, action: np.ndarray, source: int, on_step) -> None:
        log.sources.append(source)
        if log.actions is not None:
            log.actions.append(action.tolist())
        if on_step is not None:
            on_step(t, self.robot.get_observation(), action)
        self.robot.apply(action)
        log.length = t + 1

    def _run_sync(self, log: EpisodeLog, horizon: int, on_step) -> None:
        """Chunk, replan_every actions, chunk... (no clock). The observation is taken before the request's timer
        starts: chunk_ms is the policy's time alone, as an in-process policy would report it."""
        cfg = self.config
        ens = TemporalEnsembler(cfg.ensemble_coeff) if cfg.blend == "ensemble" else None
        queue_: list[np.ndarray] = []
        src = 0
        for t in range(horizon):
            if not queue_:
                src = t
                obs = self.robot.get_observation()
                t0 = time.perf_counter()
                out = self._infer(obs, t)
                self._record_chunk(log, out, (time.perf_counter() - t0) * 1e3)
                chunk = np.asarray(out["actions"], dtype=np.float32)  # (H, D)
                queue_ = list(chunk[: cfg.replan_every or len(chunk)])
                if ens is not None:  # the whole chunk: its later actions join the steps the next chunks cover
                    ens.add(t, chunk)
            action = queue_.pop(0)  # with ensembling the queue still times the requests
            if ens is not None:
                action = ens.action(t)
            self._apply(log, t, action, src, on_step)
            if getattr(self.robot, "done", False):
                return

    def _run_async(self, log: EpisodeLog, horizon: int, on_step) -> None:
        """One action every period from the plan; chunks are requested in the background and merged as they land."""
        run = self._start_async(log)
        for t in range(horizon):
            tick = self._wait_for_tick(run, log.stats)
            self._take_replies(run, log, t)  # chunks that arrived since the last tick
            self._request_if_low(run, log.stats, t)  # early enough that the queue never runs dry
            action, src = run.plan.pop(t, (None, -1))  # the action due now
            if action is None:
                if self._note_starvation(run, log.stats, tick):  # give_up_s reached: the episode ends here
                    break
                action = self._starved_action(run, log, t, tick)
            else:
                self._note_fed(run, tick, action)
            if action is not None:
                self._apply(log, t, action, src, on_step)
            if getattr(self.robot, "done", False):
                break
            self._schedule_next(run, log.stats)
        self._finish_async(run, log.stats)

    def _start_async(self, log: EpisodeLog) -> _AsyncRun:
        """Resolve the blend, start the requester and (first_chunk_timeout_s > 0) wait for the first chunk; the
        clock starts once this returns."""
        cfg, st = self.config, log.stats
        period = 1.0 / cfg.rate_hz
        if self._requester is None:
            self._requester = _Requester(self._timed_infer)
        inpaint = cfg.blend in ("inpaint", "auto") and self._takes_prefix(warn=cfg.blend == "inpaint")
        st.blend = "inpaint" if inpaint else ("none" if cfg.blend in ("auto", "inpaint") else cfg.blend)
        self._ens = None
        plan: dict[int, tuple[np.ndarray, int]] = {}
        chunk_len = int((getattr(self.policy, "metadata", None) or {}).get("chunk_size", 8))

        t_wait = time.perf_counter()
        if cfg.first_chunk_timeout_s > 0:  # the clock starts with a chunk in hand
            plan, chunk_len = self._first_chunk(log, cfg.first_chunk_timeout_s)
            if cfg.blend == "ensemble" and plan:  # the first prediction of each of its steps
                self._merge(plan, np.stack([a for a, _ in plan.values()]), 0, 0)

        run = _AsyncRun(period=period, req=self._requester, inpaint=inpaint, plan=plan, chunk_len=chunk_len,
                        t_next=time.perf_counter())
        if not plan:  # no first chunk: starved since the wait for it began
            run.starved_since = t_wait
        return run

    @staticmethod
    def _wait_for_tick(run: _AsyncRun, st: LoopStats) -> float:
        """Sleep until the next tick is due; returns its perf_counter time and logs the period since the last."""
        now = time.perf_counter()
        if now < run.t_next:
            time.sleep(run.t_next - now)
        tick = time.perf_counter()
        if run.prev_tick is not None:
            st.periods_ms.append((tick - run.prev_tick) * 1e3)
        run.prev_tick = tick
        return tick

    def _take_replies(self, run: _AsyncRun, log: EpisodeLog, t: int) -> None:
        """Merge every reply that has arrived, in arrival order."""
        while True:
            try:
                res = run.req.results.get_nowait()
            except queue.Empty:
                return
            self._take_reply(run, log, t, res)

    def _take_reply(self, run: _AsyncRun, log: EpisodeLog, t: int, res: dict) -> None:
        """One reply at step t: count a failure (and wait retry_interval_s before the next request), discard it past
        its deadline, else align it by its request step (the actions for steps < t are dropped) and merge the rest."""
        cfg, st = self.config, log.stats
        if res["episode"] != self._episode:  # a reply to a request of an earlier episode
            return
        if res["error"] is not None:
            st.request_failures += 1
            st.last_error = f"{type(res['error']).__name__}: {res['error']}"[:300]
            run.retry_at = time.perf_counter() + cfg.retry_interval_s
            return
        chunk = np.asarray(res["out"]["actions"], dtype=np.float32)  # (H, D)
        run.chunk_len = len(chunk)
        if res["step"] + len(chunk) <= t:  # past its deadline: its last action was due before now
            st.late_discarded += 1
            return
        self._record_chunk(log, res["out"], (res["t_recv"] - res["t_sent"]) * 1e3,
                           cover_ms=(res["t_recv"] - res["t_obs"]) * 1e3)
        skip = t - res["step"]
        st.stale_dropped += skip
        self._merge(run.plan, chunk[skip:], t, res["step"])

    def _request_if_low(self, run: _AsyncRun, st: LoopStats, t: int) -> None:
        """Request the next chunk with the current observation when the plan runs below the request threshold, no
        request is out and no retry wait is pending."""
        cfg = self.config
        below = cfg.request_below or self._adaptive_below(list(self._recent_ms), run.period, run.chunk_len,
                                                          cfg.latency_margin)
        # (inpaint: not while a reply is waiting to be merged: the prefix must be taken from the plan it lands on)
        if len(run.plan) < below and not run.req.busy and time.perf_counter() >= run.retry_at and not (
                run.inpaint and not run.req.results.empty()):
            t_obs = time.perf_counter()  # the queue must cover the observation too (cameras, rendering)
            obs = self.robot.get_observation()
            if run.inpaint:
                obs = self._with_prefix(obs, run.plan, t, run.period, run.chunk_len, st)
            run.req.submit({"obs": obs, "t_obs": t_obs, "step": t, "episode": self._episode,
                            "deadline": time.monotonic() + cfg.request_timeout_ms / 1e3,
                            "timeout_ms": cfg.request_timeout_ms})

    def _note_starvation(self, run: _AsyncRun, st: LoopStats, tick: float) -> bool:
        """Count a tick with an empty queue; log an outage once it has lasted policy_lost_s. True when it has lasted
        give_up_s: the loop stops."""
        cfg = self.config
        st.starvation_events += 1
        if run.starved_since is None:
            run.starved_since = tick
        starved = tick - run.starved_since
        if starved >= cfg.policy_lost_s and not run.outage:
            run.outage = True
            st.policy_outages += 1
            log_.warning("no action chunk for %.1f s (last error: %s): %s; retrying", starved,
                         st.last_error or "none, the request is still out", "not commanding the robot (its "
                         "watchdog holds it)" if cfg.starvation_hold_s is not None else "sending hold actions")
        if cfg.give_up_s is not None and starved >= cfg.give_up_s:
            st.gave_up = st.policy_lost = True
            log_.warning("no action chunk for %.1f s (last error: %s): giving up on the policy server", starved,
                         st.last_error or "none, the request is still out")
            return True
        return False

    def _starved_action(self, run: _AsyncRun, log: EpisodeLog, t: int, tick: float) -> np.ndarray | None:
        """The hold action for a starved tick, or None (a silent tick, counted): past starvation_hold_s, or an
        absolute target to hold does not exist yet."""
        cfg, st = self.config, log.stats
        quiet = cfg.starvation_hold_s is not None and tick - run.starved_since > cfg.starvation_hold_s - 1e-9
        action = None if quiet else self._hold(run.last)
        if action is None:
            st.silent_ticks += 1
            if st.t_first_silent is None:
                st.t_first_silent = time.time()
            log.length = t + 1
        return action

    @staticmethod
    def _note_fed(run: _AsyncRun, tick: float, action: np.ndarray) -> None:
        """An action from a chunk: any starvation is over, and it is what a later hold keeps."""
        if run.outage:
            log_.warning("action chunks again after %.1f s: commanding the robot", tick - run.starved_since)
        run.starved_since, run.outage = None, False
        run.last = action

    @staticmethod
    def _schedule_next(run: _AsyncRun, st: LoopStats) -> None:
        """The next tick one period on; more than a period behind: re-anchor the schedule, don't burst."""
        run.t_next += run.period
        if time.perf_counter() > run.t_next + run.period:
            st.overruns += 1
            run.t_next = time.perf_counter()

    def _finish_async(self, run: _AsyncRun, st: LoopStats) -> None:
        """An episode that ended during an outage lost the policy (the next would start without one); wait for the
        request still out."""
        st.policy_lost = st.policy_lost or run.outage
        run.req.wait_idle(self.config.request_timeout_ms / 1e3 + 1.0)  # nothing of this episode leaks into the next

    def _timed_infer(self, job: dict) -> dict:
        out = self._infer(job["obs"], job["step"], job["timeout_ms"], job["deadline"])
        if self.config.inject_delay_ms > 0:  # a slower policy, for honest delay studies with a fast one
            time.sleep(self.config.inject_delay_ms / 1e3)
        return out

    def _takes_prefix(self, warn: bool = True) -> bool:
        """Whether the policy (server) takes prefix_actions; one that does not gets requests without a prefix."""
        meta = getattr(self.policy, "metadata", None) or {}
        ok = bool(meta.get("prefix_actions"))
        if not ok and warn and not self._warned_prefix:
            self._warned_prefix = True
            log_.warning("blend 'inpaint': the policy does not take prefix_actions (older server?); switching chunks "
                         "without it")
        return ok

    def estimate_delay(self, period: float, chunk_len: int) -> int:
        """Control steps between a request and its reply's arrival, from the recent observation-to-arrival times
        (the slowest of the last 5; 1 step before any): the actions that run while the next chunk is decoded."""
        recent = list(self._recent_ms)[-5:]
        if not recent:
            return 1
        return int(min(chunk_len - 1, max(1, math.ceil(max(recent) / 1e3 / period))))

    def _with_prefix(self, obs: dict, plan: dict, t: int, period: float, chunk_len: int, st: LoopStats) -> dict:
        """obs + prefix_actions: the planned actions for steps t .. t+d-1 (d: the estimated delay; fewer when the
        plan ends sooner). The reply starts with exactly these, so aligning it changes nothing already planned."""
        d = self.estimate_delay(period, chunk_len)
        prefix = []
        for i in range(d):
            if t + i not in plan:
                break
            prefix.append(plan[t + i][0])
        st.rtc_delay_steps.append(d)
        st.rtc_prefixes.append((t, [a.tolist() for a in prefix]))
        if not prefix:
            return obs
        return {**obs, "prefix_actions": np.stack(prefix).astype(np.float32)}

    @staticmethod
    def _adaptive_below(latencies_ms: list[float], period: float, chunk_len: int, margin: float = 2.0) -> int:
        """Enough queued actions to cover `margin` x the slowest of the last 20 requests, plus one step.

        A margin over the slowest recent request, not the slowest itself or a percentile: latencies have a tail, and
        a single request slower than the ones before it would otherwise empty the queue (docs/EXPERIMENTS.md, Serving).
        """
        if not latencies_ms:
            return max(1, chunk_len // 2)
        lat = margin * float(np.max(latencies_ms[-20:])) / 1e3
        return int(min(chunk_len, max(chunk_len // 2, math.ceil(lat / period) + 1)))

    def _first_chunk(self, log: EpisodeLog, timeout_s: float) -> tuple[dict, int]:
        t0 = time.perf_counter()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                out = self._infer(self.robot.get_observation(), 0, timeout_ms=min(self.config.request_timeout_ms,
                                                                                   (end - time.monotonic()) * 1e3),
                                  deadline=end)
            except Exception as e:  # noqa: BLE001 - server not there yet: keep trying until the timeout
                log.stats.request_failures += 1
                log.stats.last_error = f"{type(e).__name__}: {e}"[:300]
                time.sleep(self.config.retry_interval_s)
                continue
            self._record_chunk(log, out, (time.perf_counter() - t0) * 1e3)
            chunk = np.asarray(out["actions"], dtype=np.float32)
            return {i: (a, 0) for i, a in enumerate(chunk)}, len(chunk)
        return {}, int((getattr(self.policy, "metadata", None) or {}).get("chunk_size", 8))

    def _merge(self, plan: dict, actions: np.ndarray, t: int, src: int) -> None:
        """Put aligned actions (steps t, t+1, ...) into the plan: replace, cross-fade where they overlap, or (ensemble)
        average every prediction of each step."""
        if self.config.blend == "ensemble":
            if self._ens is None:
                self._ens = TemporalEnsembler(self.config.ensemble_coeff)
            self._ens.add(t, actions)
            for k in range(t, t + len(actions)):  # every step it covers: the mean of all predictions of that step
                plan[k] = (self._ens.action(k), src)
            return
        new = {}
        m = sum((t + i) in plan for i in range(len(actions)))  # overlapping steps
        for i, a in enumerate(actions):
            old = plan.get(t + i)
            if old is None or self.config.blend != "linear":  # none, inpaint: the new chunk replaces (inpaint: it
                # starts with the planned actions it was given, so the steps it shares with the plan are unchanged)
                new[t + i] = (a, src)
            else:
                w = (i + 1) / (m + 1)  # ramps from the old plan towards the new chunk
                new[t + i] = ((w * a + (1 - w) * old[0]).astype(np.float32), src)
        plan.clear()
        plan.update(new)
