"""Closed-loop evaluation through a policy server (`vla eval --server ...`).

sync mode: the ControlLoop's exact mode, the same episodes, seeds and actions as local `sim.evaluate`.
async mode: the fixed-rate loop with an asynchronous chunk queue, as a robot would run it; the summary adds
loop statistics (rate, starvation, jitter, latency).
"""

from __future__ import annotations

import os
import time

import numpy as np

from robot_bridge.client import PolicyClient, PolicyServerLost, no_answer, policy_warnings
from robot_bridge.control_loop import ControlLoop, EnvRobot, LoopConfig
from robot_bridge.protocol import ErrorCode, ServerError


def evaluate_server(
    address: str,
    task: str,
    episodes: int = 50,
    replan_every: int | None = None,
    image_size: int = 128,
    videos: int = 2,
    out_dir: str | None = None,
    mode: str = "sync",
    rate_hz: float = 20.0,
    seed_base: int | None = None,
    keep_actions: bool = False,
    progress: bool = True,
    timeout_ms: float = 10_000.0,
    loop: LoopConfig | None = None,
    max_steps: int | None = None,
    failure_videos: int = 0,
    blend: str = "auto",
    inject_delay_ms: float = 0.0,
    ensemble_coeff: float = 0.01,
    warn=None,
) -> dict:
    """Evaluate the policy behind `address` on `task`; returns sim.evaluate.summarize's dict (+ loop stats).

    max_steps: cut episodes short (tests); default the task's horizon. Videos (with out_dir): the first `videos`
    episodes and the first `failure_videos` failed ones among the others. timeout_ms bounds every wait for the server:
    the handshake and each sync request (with one retry), an async episode without chunks; a server that does not
    answer raises robot_bridge.client.PolicyServerLost saying so. warn(text): called with what the handshake says the
    policy cannot do here (a task it was never trained on), before the first episode.
    """
    from sim.env import VLAEnv
    from sim.evaluate import EVAL_SEED_BASE, frame, summarize, video_path, write_video

    if failure_videos < 0:
        raise ValueError(f"failure_videos: expected >= 0, got {failure_videos}")
    seed_base = EVAL_SEED_BASE if seed_base is None else seed_base
    client = PolicyClient(address, timeout_ms=timeout_ms / 2, retries=1)
    try:
        try:
            meta = client.hello()
        except (TimeoutError, ConnectionError) as e:
            raise no_answer(address, e) from None
        for w in policy_warnings(meta, task=task) if warn else ():
            warn(w)
        replan = int(replan_every or meta.get("n_action_steps") or meta["chunk_size"])
        cfg = loop or LoopConfig(mode=mode, rate_hz=rate_hz, replan_every=replan, blend=blend,
                                 inject_delay_ms=inject_delay_ms, ensemble_coeff=ensemble_coeff,
                                 request_timeout_ms=min(timeout_ms, 2000.0) + inject_delay_ms,
                                 first_chunk_timeout_s=timeout_ms / 1e3, give_up_s=timeout_ms / 1e3)
        env = VLAEnv(task, image_size=image_size, cameras=tuple(meta["cameras"]))
        robot = _GLEnvRobot(env)
        ctl = ControlLoop(client, robot, cfg, action_dim=int(meta["action_dim"]))
        seeds = [seed_base + i for i in range(episodes)]
        results, stats = [], []
        t0 = time.time()
        bar = _progress(seeds, f"{task} via {address} ({cfg.mode})", progress)
        failures_written = 0
        for i, seed in enumerate(bar):
            chosen = i < videos
            frames: list | None = [] if out_dir and (chosen or failures_written < failure_videos) else None
            on_step = None
            if frames is not None:
                def on_step(t, obs, a, frames=frames):
                    frames.append(frame(obs))
            try:
                log = _episode(ctl, address, f"in {task} episode {i} (seed {seed})", seed=seed, max_steps=max_steps,
                               keep_actions=keep_actions, on_step=on_step)
            except PolicyServerLost:
                ctl.close()
                env.close()
                raise
            video = None
            if frames is not None and (chosen or not log.success):
                frames.append(frame(robot.get_observation()))
                video = video_path(out_dir, task, seed, log.success, f"_{cfg.mode}")
                write_video(frames, video)
                failures_written += not chosen
            s = log.stats.summary()
            stats.append(log.stats)
            results.append({
                **log.summary(),
                **({"loop": s} if cfg.mode == "async" else {}),
                **({"actions": log.actions, "sources": log.sources} if keep_actions else {}),
                **({"video": os.path.relpath(video, out_dir)} if video else {}),
            })
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(success=f"{np.mean([r['success'] for r in results]):.0%}")
        ctl.close()
        env.close()
        extra = {"server": address, "model": meta.get("model"), "mode": cfg.mode, "replan_every": replan,
                 "client": dict(client.stats)}
        if cfg.mode == "async":
            extra.update(rate_hz=cfg.rate_hz, blend=cfg.blend, inject_delay_ms=cfg.inject_delay_ms,
                         blend_used=stats[-1].blend if stats else None, loop=aggregate_stats(stats),
                         **({"ensemble_coeff": cfg.ensemble_coeff} if cfg.blend == "ensemble" else {}))
        return summarize(results, task, time.time() - t0, out_dir, extra=extra)
    finally:
        client.close()


def _episode(ctl: ControlLoop, address: str, where: str, **kw):
    """ctl.run_episode(**kw); a server that stops answering (sync: a request failed after its retry; async: no chunk
    for the loop's give_up_s) raises PolicyServerLost naming `where`."""
    try:
        log = ctl.run_episode(**kw)
    except (TimeoutError, ConnectionError) as e:
        raise no_answer(address, e, where) from None
    except ServerError as e:
        if e.code != ErrorCode.SHUTTING_DOWN:
            raise
        raise no_answer(address, e, where) from None
    if log.stats.gave_up:
        raise no_answer(address, log.stats.last_error or "no chunk", where)
    return log


class _GLEnvRobot(EnvRobot):
    """EnvRobot that makes its env's EGL context current before rendering: robosuite renders into whichever
    context is current, so another env created or closed in this process would otherwise corrupt its images."""

    def _current(self) -> None:
        ctx = getattr(getattr(getattr(self.env, "_rs", None), "sim", None), "_render_context_offscreen", None)
        gl = getattr(ctx, "gl_ctx", None)
        if gl is not None and hasattr(gl, "make_current"):
            gl.make_current()

    def reset(self, seed=None):
        self._current()
        return super().reset(seed)

    def apply(self, action):
        self._current()
        super().apply(action)


def aggregate_stats(stats: list) -> dict:
    """LoopStats of several episodes -> one summary (periods and latencies pooled)."""
    if not stats:
        return {}
    periods = np.concatenate([np.asarray(s.periods_ms) for s in stats]) if stats else np.zeros(0)
    lat = np.concatenate([np.asarray(s.latencies_ms) for s in stats])
    target = stats[0].target_period_ms
    steps, secs = sum(s.steps for s in stats), sum(s.seconds for s in stats)
    return {
        "loop_hz": steps / secs if secs else 0.0,  # whole episodes: the first chunk's wait and the last drain too
        "tick_hz": 1e3 / float(np.mean(periods)) if len(periods) else None,  # while ticking
        "jitter_ms_p99": float(np.percentile(np.abs(periods - target), 99)) if len(periods) else None,
        "period_ms_p50": float(np.median(periods)) if len(periods) else None,
        "latency_ms_p50": float(np.median(lat)) if len(lat) else None,
        "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
        **{k: int(sum(getattr(s, k) for s in stats)) for k in ("steps", "chunks", "starvation_events", "stale_dropped",
                                                               "late_discarded", "request_failures", "overruns")},
        **({"rtc_delay_steps_mean": float(np.mean(d))} if (d := [x for s in stats for x in s.rtc_delay_steps]) else {}),
    }


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="ep")
