"""Closed-loop evaluation of a chunk policy in the simulated tasks.

A policy here is anything with `reset()` and `infer(obs) -> {"actions": float32 (H, D), "timing": {...}}`:
a local `vla.Policy` or a `robot_bridge` client talking to a policy server. Episodes run in robot_bridge's control loop
(sync mode), the runner remote evaluation and robots use too. Every episode seed is fixed (EVAL_SEED_BASE + i, disjoint
from collection seeds), the policy is reset before each episode, and a chunk is requested every `replan_every` steps,
so reruns give the same numbers.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from robot_bridge.control_loop import ControlLoop, EnvRobot, EpisodeLog, LoopConfig

EVAL_SEED_BASE = 1_000_000


class _HookedEnvRobot(EnvRobot):
    """EnvRobot that calls hook(t, action) before each step, without rendering an observation the hook does not read
    (the loop's own on_step hands one over)."""

    def __init__(self, env, hook):
        super().__init__(env)
        self._hook = hook

    def apply(self, action: np.ndarray) -> None:
        self._hook(self.steps, action)
        super().apply(action)


def rollout(env, policy, seed: int, replan_every: int, frames: list | None = None, keep_actions: bool = False,
            max_steps: int | None = None, on_step=None, ensemble: float | None = None) -> EpisodeLog:
    """One closed-loop episode in `env` (sim.env.VLAEnv); `on_step(t, action)`, if given, is called before each action
    is executed, and `frames`, if given, receives every step's video frame and the last one.

    ensemble: None runs each chunk's first `replan_every` actions as decoded; a float is the temporal-ensembling
    coefficient (robot_bridge.ensemble.TemporalEnsembler): every step executes the weighted mean of all decoded chunks
    that cover it (a chunk is still requested every `replan_every` steps)."""
    blend = {} if ensemble is None else {"blend": "ensemble", "ensemble_coeff": ensemble}
    robot = EnvRobot(env) if on_step is None else _HookedEnvRobot(env, on_step)
    loop = ControlLoop(policy, robot, LoopConfig(mode="sync", replan_every=replan_every, **blend))
    record = None if frames is None else (lambda t, obs, a: frames.append(frame(obs)))
    log = loop.run_episode(seed=seed, max_steps=max_steps, keep_actions=keep_actions, on_step=record)
    if frames is not None:
        frames.append(frame(env.observe()))
    return log


def frame(obs: dict) -> np.ndarray:
    """One video frame: the cameras side by side, sorted by name. uint8 (S, S * n_cameras, 3)."""
    return np.concatenate([obs["images"][c] for c in sorted(obs["images"])], axis=1)


def write_video(frames: list[np.ndarray], path: str, fps: int = 20) -> None:
    import imageio

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.mp4"
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=1) as w:
        for f in frames:
            w.append_data(f)
    os.replace(tmp, path)


def video_path(out_dir: str, task: str, seed: int, success: bool, suffix: str = "") -> str:
    return os.path.join(out_dir, "videos", f"{task}_seed{seed}_{'ok' if success else 'fail'}{suffix}.mp4")


def _worker(args) -> list[dict]:
    (policy_path, decode, task, seeds, replan, image_size, video_seeds, failure_videos, out_dir, threads, keep_actions,
     max_steps, progress, ensemble) = args
    import torch

    torch.set_num_threads(threads)
    from sim.env import VLAEnv
    from vla.policy import Policy

    policy = Policy.from_pretrained(policy_path, decode=decode)
    env = VLAEnv(task, image_size=image_size, cameras=policy.cfg.cameras)
    out = []
    failures_written = 0
    from tqdm import tqdm

    for s in tqdm(seeds, desc=f"eval {task}", unit="ep", disable=not progress, leave=False):
        # frames of every episode while failure videos are wanted: which episodes fail is known only at their end
        record = out_dir and (s in video_seeds or failures_written < failure_videos)
        frames = [] if record else None
        r = rollout(env, policy, s, replan, frames, keep_actions, max_steps=max_steps, ensemble=ensemble)
        row = {**r.summary(), **({"actions": r.actions} if keep_actions else {})}
        if frames is not None and (s in video_seeds or not r.success):
            path = video_path(out_dir, task, s, r.success)
            write_video(frames, path)
            row["video"] = os.path.relpath(path, out_dir)
            failures_written += s not in video_seeds
        out.append(row)
    env.close()
    return out


def evaluate_policy_dir(
    policy_path: str,
    task: str,
    episodes: int = 50,
    replan_every: int | None = None,
    decode: dict | None = None,
    image_size: int = 128,
    workers: int = 1,
    videos: int = 2,
    out_dir: str | None = None,
    seed_base: int = EVAL_SEED_BASE,
    failure_videos: int = 0,
    keep_actions: bool = False,
    max_steps: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    ensemble: float | None = None,
) -> dict:
    """Evaluate a saved policy; episodes split over `workers` processes, each with `threads` torch threads
    (default: 1 per worker when several workers share the cores, else all cores). Fixed thread counts keep reruns
    identical. max_steps cuts episodes short (smoke tests); default the task's horizon. Videos (with out_dir): the
    first `videos` episodes, plus the first `failure_videos` failed episodes among the others (by seed, whatever the
    number of workers); each episode's row names its video. ensemble: temporal-ensembling coefficient (see rollout)."""
    from vla.policy import read_checkpoint_files

    config, _, _ = read_checkpoint_files(policy_path)
    replan = int(replan_every or config.get("n_action_steps") or config["model"]["chunk_size"])
    seeds = [seed_base + i for i in range(episodes)]
    video_seeds = set(seeds[:videos])
    workers = max(1, min(workers, episodes))
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    chunks = [seeds[i::workers] for i in range(workers)]
    if failure_videos < 0:
        raise ValueError(f"failure_videos: expected >= 0, got {failure_videos}")
    if ensemble is not None:  # a bad coefficient fails here, not in each worker
        from robot_bridge.ensemble import check_coeff

        ensemble = check_coeff(ensemble)
    jobs = [(policy_path, decode, task, c, replan, image_size, video_seeds, failure_videos, out_dir, threads,
             keep_actions, max_steps, progress and i == 0, ensemble) for i, c in enumerate(chunks)]
    t0 = time.time()
    if workers == 1:
        results = _worker(jobs[0])
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            results = [r for part in pool.map(_worker, jobs) for r in part]
    results.sort(key=lambda r: r["seed"])
    _keep_first_failure_videos(results, video_seeds, failure_videos, out_dir)
    return summarize(results, task, time.time() - t0, out_dir, extra={"policy": policy_path, "replan_every": replan,
                                                                      "decode": decode or {}, "ensemble": ensemble})


def _keep_first_failure_videos(results: list[dict], video_seeds: set, n: int, out_dir: str | None) -> None:
    """Each worker wrote the first n failures among its own seeds (ascending), so together they hold the first n
    overall: keep those, delete the rest."""
    extra = [r for r in results if r.get("video") and not r["success"] and r["seed"] not in video_seeds]
    for r in extra[n:]:
        os.remove(os.path.join(out_dir, r.pop("video")))


def summarize(results: list[dict], task: str, seconds: float, out_dir: str | None, extra: dict | None = None) -> dict:
    succ = [r["success"] for r in results]
    lat = [r["chunk_ms_p50"] for r in results if r.get("chunk_ms_p50") is not None]
    summary = {
        "task": task,
        "episodes": len(results),
        "success_rate": float(np.mean(succ)) if succ else 0.0,
        "mean_length": float(np.mean([r["length"] for r in results])) if results else 0.0,
        "chunk_ms_p50": float(np.median(lat)) if lat else None,
        "seconds": round(seconds, 1),
        **(extra or {}),
    }
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"episodes_{task}.jsonl"), "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
        with open(os.path.join(out_dir, f"summary_{task}.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def format_table(summaries: list[dict]) -> str:
    lines = [f"{'task':<14}{'episodes':>9}{'success':>9}{'mean len':>10}{'chunk ms p50':>14}"]
    for s in summaries:
        lat = f"{s['chunk_ms_p50']:.1f}" if s.get("chunk_ms_p50") is not None else "-"
        lines.append(f"{s['task']:<14}{s['episodes']:>9}{s['success_rate']:>9.1%}{s['mean_length']:>10.1f}{lat:>14}")
    return "\n".join(lines)
