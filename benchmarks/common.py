"""What the benchmark scripts share: the repository paths (importing this puts the repository root on sys.path),
atomic JSON results, the command line a result records, percentiles, `vla` subcommands run and logged as a user
would type them (one a script finds already done is logged without running again), and chunk latency over
observations taken from demo files."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VLA = os.path.join(ROOT, ".venv", "bin", "vla")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# --- results ---------------------------------------------------------------------------------------------------------

def write_json(path: str, obj, indent: int | None = 2, default=None) -> None:
    """obj -> path as JSON (its folder created if needed), written to a temporary name and then renamed, so an
    interrupted run never leaves a truncated file in place of the previous results."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, default=default)
    os.replace(tmp, path)


def command(script: str, argv: list[str] | None = None) -> str:
    """The command line a result file records: `python benchmarks/<script> ARGS` (argv: sys.argv[1:] by default)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join([f"python benchmarks/{os.path.basename(script)}", *(shlex.quote(str(a)) for a in args)])


def add_stages(ap, stages: list[str]) -> None:
    """--stages on a staged script's parser: every stage by default, in the script's order."""
    ap.add_argument("--stages", default=",".join(stages), help="comma-separated subset of " + ",".join(stages))


def parse_stages(text: str, stages: list[str]) -> list[str]:
    """--stages "a,b" -> ["a", "b"]; an unknown stage exits naming it and the known ones."""
    chosen = [s for s in text.split(",") if s]
    unknown = sorted(set(chosen) - set(stages))
    if unknown:
        sys.exit(f"--stages: unknown {unknown}; expected a subset of {stages}")
    return chosen


def pct(x, q: float) -> float | None:
    """The q-th percentile of x as a float; None for no values."""
    return float(np.percentile(np.asarray(x, np.float64), q)) if len(x) else None


# --- `vla` subcommands -----------------------------------------------------------------------------------------------

def cmd_str(cmd: list[str]) -> str:
    return " ".join(shlex.quote("vla" if c == VLA else c) for c in cmd)


def run(cmd: list[str], log: list[str], done: str | None = None) -> None:
    """Log `cmd`; run it in the repository root (an error if it fails) unless `done` says why it need not run."""
    log.append(cmd_str(cmd))
    if done:
        print(f"= {log[-1]}  ({done})", flush=True)
        return
    print("+", log[-1], flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def policy_done(run_dir: str) -> bool:
    """`vla train` / `vla distill` finished in run_dir: its policy/ weights are written."""
    return os.path.exists(os.path.join(ROOT, run_dir, "policy", "model.safetensors"))


def train_run(cmd: list[str], run_dir: str, log: list[str]) -> None:
    """A `vla train` / `vla distill` command writing run_dir: skipped when its policy exists, resumed (--resume) when
    an interrupted run left checkpoints."""
    done = policy_done(run_dir)
    if not done and os.path.exists(os.path.join(ROOT, run_dir, "checkpoints", "LATEST")):
        cmd = [*cmd, "--resume"]  # an interrupted run
    run(cmd, log, done=f"{run_dir}/policy exists" if done else None)


def train_record(run_dir: str) -> dict:
    """What <run_dir>/train_summary.json (written by `vla train` / `vla distill`) says about the run."""
    with open(os.path.join(ROOT, run_dir, "train_summary.json")) as f:
        s = json.load(f)
    return {"steps": s["steps"], "train_minutes": round(s["train_seconds"] / 60, 1),
            "train_samples_per_s": round(s["samples_per_s"], 1), "parameters": s["parameters"],
            "threads": s.get("threads")}


def ship(log: list[str], src: str, dst: str, reproduce: str, extra: list[str] = ()) -> None:
    """src -> dst in fp16 (written to dst.tmp, then renamed; src may be dst), with the command that reproduces it in
    config.json's "reproduce" field; extra: more `vla export` flags (--steps-k, --note)."""
    tmp = dst + ".tmp"
    shutil.rmtree(os.path.join(ROOT, tmp), ignore_errors=True)
    run([VLA, "export", "--policy", src, "--out", tmp, "--dtype", "float16", "--note", f"reproduce={reproduce}",
         *extra], log)
    shutil.rmtree(os.path.join(ROOT, dst), ignore_errors=True)
    os.replace(os.path.join(ROOT, tmp), os.path.join(ROOT, dst))
    log[-1] = log[-1].replace(tmp, dst)


# --- chunk latency on real observations ------------------------------------------------------------------------------
# Observations come from a demo file (images, state, instruction), so confidence patterns - and thus the number of
# passes of threshold-based decoders - are those the policy meets in closed loop.

def training_data(policy_dir: str) -> str | None:
    """The first demo file a policy was trained on (its config.json's training record), or None."""
    cfg = json.load(open(os.path.join(policy_dir, "config.json")))
    paths = (((cfg.get("train") or {}).get("data") or {}).get("paths")) or []
    return paths[0] if paths else None


def demo_observation(demo, t: int) -> dict:
    """Frame t of a vla.features.Demo as a policy observation."""
    return {"images": {c: im[t] for c, im in demo.images.items()}, "state": demo.state[t],
            "instruction": demo.instruction}


def sample_observations(dataset: str, n: int = 100, seed: int = 0, task: str | None = None) -> list[dict]:
    from vla.formats import load_demos

    demos = load_demos(dataset, split=None, tasks=[task] if task else None)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        d = demos[int(rng.integers(len(demos)))]
        out.append(demo_observation(d, int(rng.integers(len(d)))))
    return out


def save_observations(path: str, observations: list[dict]) -> None:
    """Observations (same cameras, state size) -> one compressed .npz (written to a temporary name, then renamed):
    images_<camera> (N, H, W, 3) uint8, state (N, S) float32, instruction (N,) str."""
    cams = sorted(observations[0]["images"])
    arrays = {f"images_{c}": np.stack([np.asarray(o["images"][c], np.uint8) for o in observations]) for c in cams}
    arrays["state"] = np.stack([np.asarray(o["state"], np.float32) for o in observations])
    arrays["instruction"] = np.array([o["instruction"] for o in observations])
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_observations(path: str) -> list[dict]:
    """The inverse of save_observations."""
    with np.load(path, allow_pickle=False) as z:
        cams = [k[len("images_"):] for k in z.files if k.startswith("images_")]
        if not cams or "state" not in z.files or "instruction" not in z.files:
            raise ValueError(f"{path}: expected images_<camera>, state and instruction arrays, got {z.files}")
        images = {c: z[f"images_{c}"] for c in cams}
        state, instr = z["state"], z["instruction"]
    return [{"images": {c: images[c][i] for c in cams}, "state": state[i], "instruction": str(instr[i])}
            for i in range(len(state))]


def measure(policy, observations: list[dict], warmup: int = 5) -> dict:
    """Per-chunk wall time of policy.infer (prefix + decode + detokenize), batch 1, reset before each (untimed)."""
    import torch

    for o in observations[:warmup]:
        policy.infer(o)
    lat, nfe, tokens = [], [], []
    for o in observations:
        policy.reset()
        t0 = time.perf_counter()
        r = policy.infer(o)
        lat.append((time.perf_counter() - t0) * 1e3)
        nfe.append(r["timing"]["nfe"])
        tokens.append(r["timing"]["tokens"])
    lat = np.array(lat)
    return {"latency_ms_p50": pct(lat, 50), "latency_ms_p99": pct(lat, 99), "latency_ms_mean": float(lat.mean()),
            "nfe": float(np.mean(nfe)), "tokens_per_chunk": float(np.mean(tokens)),
            "tokens_per_s": float(np.sum(tokens) / (lat.sum() / 1e3)), "n": len(lat),
            "threads": torch.get_num_threads()}


# --- a policy server in its own process ------------------------------------------------------------------------------

class VlaServe:
    """`vla serve --policy DIR` in a subprocess on a free local port, ready once it answers hello (`metadata`);
    stopped (SIGINT, then kill) by stop() or at the end of a `with` block. Its output goes to log_path, if given."""

    def __init__(self, policy: str, threads: int | None = None, extra: list[str] = (), log_path: str | None = None,
                 timeout_s: int = 120):
        from robot_bridge.client import PolicyClient
        from robot_bridge.net import free_port

        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.log = open(log_path, "w") if log_path else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "vla.cli", "serve", "--policy", policy, "--bind", self.address,
               *(["--threads", str(threads)] if threads else []), *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": ROOT})
        try:
            with PolicyClient(self.address, timeout_ms=1000, retries=0) as c:
                for _ in range(timeout_s):
                    try:
                        self.metadata = c.hello()
                        return
                    except TimeoutError:
                        if not self.alive():
                            raise RuntimeError(f"vla serve exited {self.proc.returncode} (log: {log_path})") from None
            raise TimeoutError(f"vla serve on {self.address} did not answer hello in {timeout_s} s")
        except BaseException:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
