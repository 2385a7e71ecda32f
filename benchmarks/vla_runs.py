"""Running `vla` subcommands from benchmark scripts: every command is logged as a user would type it (`vla ...`) so a
result file lists the commands behind it; one a script finds already done is logged without running again."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VLA = os.path.join(ROOT, ".venv", "bin", "vla")


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


def ship(log: list[str], src: str, dst: str, reproduce: str) -> None:
    """src -> dst in fp16 (written to dst.tmp, then renamed), with the command that reproduces it in config.json's
    "reproduce" field."""
    tmp = dst + ".tmp"
    shutil.rmtree(os.path.join(ROOT, tmp), ignore_errors=True)
    run([VLA, "export", "--policy", src, "--out", tmp, "--dtype", "float16", "--note", f"reproduce={reproduce}"], log)
    shutil.rmtree(os.path.join(ROOT, dst), ignore_errors=True)
    os.replace(os.path.join(ROOT, tmp), os.path.join(ROOT, dst))
    log[-1] = log[-1].replace(tmp, dst)
