"""Peers: LeRobot's ACT and Diffusion Policy against our policy, trained on the same demos, evaluated by our harness
through our ZeroMQ protocol (GitHub issue "peers").

Runs in the PROJECT venv; the LeRobot side runs in the peer venv (`make peers` / `bash benchmarks/peers/setup.sh`):

    .venv/bin/python benchmarks/peers.py          # Lift, Stack, PickPlaceCan, PickColor; 50 episodes each

Per task (default Lift, Stack, PickPlaceCan, PickColor):
 1. export the demos our recipe for the task was trained on (DEFAULT_DATA, --data TASK=PATH[,PATH]; missing ones are
    collected first by `benchmarks/multitask.py --stages collect`, with the recipes' seeds) to a LeRobot v3.0
    folder (runs/peers/exports/<task>_lerobot, kept and reused; --lerobot-dataset TASK=DIR takes an existing export);
 2. train ACT-small (every task) and Diffusion-small (Lift only by default, --peers) with LeRobot's own trainer
    (benchmarks/peers/train_lerobot.py in the peer venv; runs/peers/<task>_<peer>; a finished run is reused unless
    --retrain) for the wall-clock our recipe spent on the task (budget_minutes: our recipe's recorded training time
    split by its sampling weights; --minutes TASK=MIN overrides);
 3. serve each checkpoint with benchmarks/peers/serve_lerobot.py (peer venv) and ours (--ours; DEFAULT_OURS:
    lift_tiny for Lift, multitask_tiny for the rest) with `vla serve`, --threads torch threads, each in its own process;
 4. evaluate each server with our harness (`vla eval --server ... --mode sync`: the same episode seeds for all;
    --episodes 0 skips it: a latency-only run, where a peer trained a few --train-steps costs what a trained one
    does);
 5. measure chunk latency over the same observations (--latency-obs frames of the task's demos), interleaved: every
    observation goes to every policy in turn (the order rotates), so background load hits all alike; once per
    --latency-threads value (servers restarted) and per --latency-load (busy processes beside them). chunk_ms is the
    server's `infer_ms` (the policy's infer_batch: pre-processing + model + post-processing; no transport);
    rtt_ms (client round trip) is recorded too; action_ms = chunk_ms / actions executed per chunk.
Writes --out (default benchmarks/results/peers.json; rewritten after every step, so a failure later keeps what was
measured) and a PNG next to it (success and chunk latency per policy per task):
    {"rows": [{"policy", "task", "success", "episodes", "chunk_ms_p50", "chunk_ms_p99", "threads", "params",
               "train_minutes", "train_samples_per_s", "latency": [{"threads", "load", "chunk_ms_p50", ...}], ...}],
     "ours_over_best_peer_success_min", "ours_over_act_latency", "command", ...}
ours_over_best_peer_success_min: min over tasks without language of ours' success minus the best peer's (the issue's
definition; a difference, despite the name);
ours_over_act_latency: max over tasks of ours' chunk_ms_p50 / ACT-small's at --threads, no load (< 1: ours is faster);
per_task[task].latency_vs_act: the same ratios (p50, p99, per action) for every thread count and load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from common import ROOT, command, pct, sample_observations, write_json

PEERS = {"act": "ACT-small", "diffusion": "Diffusion-small"}
DEFAULT_TASKS = ["Lift", "Stack", "PickPlaceCan", "PickColor"]
_PRE = os.path.join(ROOT, "vla", "pretrained")
# our best recipe per task: the Lift policy, and the five-task release (benchmarks/multitask.py) for the rest
DEFAULT_OURS = {"Lift": os.path.join(_PRE, "lift_tiny"), "Stack": os.path.join(_PRE, "multitask_tiny"),
                "PickPlaceCan": os.path.join(_PRE, "multitask_tiny"), "PickColor": os.path.join(_PRE, "multitask_tiny")}
# the demos those recipes were trained on (benchmarks/multitask.py collects the *_release files)
DEFAULT_DATA = {"Lift": "data/lift.hdf5", "Stack": "data/stack_release.hdf5",
                "PickPlaceCan": "data/pickplacecan_release_a.hdf5,data/pickplacecan_release_b.hdf5",
                "PickColor": "data/pickcolor.hdf5"}
# lift_tiny's recipe time (dvla.json tasks.Lift.train_minutes; the shipped config predates train_summary); other
# checkpoints carry their own (see budget_minutes)
DEFAULT_MINUTES = {"Lift": 11.3}
ADDR_RE = re.compile(r" on (tcp://[0-9.]+:\d+)")


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def per_task_raw(values: list[str] | None, tasks: list[str], what: str) -> dict:
    """['Lift=x', ...] or ['x'] (every task) -> {task: 'x'}; a task not in `tasks` is an error naming --what."""
    out = {}
    for v in values or []:
        if "=" in v:
            t, x = v.split("=", 1)
            out[t] = x
        else:
            out.update({t: v for t in tasks})
    unknown = set(out) - set(tasks)
    if unknown:
        raise SystemExit(f"--{what}: tasks {sorted(unknown)} are not in --tasks {tasks}")
    return out


def per_task(values: list[str] | None, tasks: list[str], default: dict | str | None, what: str) -> dict:
    """['Lift=path', ...] or ['path'] (every task) -> {task: absolute path}; str defaults may hold {task} (lower case)
    and are relative to the repository root, given paths to the current directory."""
    out = {t: os.path.abspath(p) for t, p in per_task_raw(values, tasks, what).items()}
    for t in tasks:
        if t not in out and default is not None:
            d = default.get(t) if isinstance(default, dict) else default.format(task=t.lower())
            if d:
                out[t] = d
    return out


def run_streamed(cmd: list[str], tag: str, log_path: str | None = None, timeout_s: float | None = None,
                 env: dict | None = None) -> int:
    """Run a command, print its output lines with a prefix (progress), keep a copy in log_path."""
    log(f"$ {' '.join(shlex.quote(c) for c in cmd)}")
    f = open(log_path, "w") if log_path else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                            start_new_session=True)
    timer = None
    if timeout_s:
        timer = threading.Timer(timeout_s, lambda: _killpg(proc, signal.SIGINT))
        timer.start()
    try:
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if f:
                f.write(line + "\n")
                f.flush()
            last = line.split("\r")[-1].strip()
            if last and last[0] not in '{}[]"':  # `vla eval` ends with its summaries as JSON: in the log only
                print(f"  [{tag}] {last}", flush=True)
        return proc.wait()
    except BaseException:
        _killpg(proc, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            _killpg(proc, signal.SIGKILL)
        raise
    finally:
        if timer:
            timer.cancel()
        if f:
            f.close()


def _killpg(proc: subprocess.Popen, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class Server:
    """A policy server in its own process (its own session); address parsed from its start-up line."""

    def __init__(self, name: str, cmd: list[str], log_path: str, env: dict | None = None):
        self.name, self.cmd, self.log_path = name, cmd, log_path
        self.address: str | None = None
        self._ready = threading.Event()
        log(f"starting server {name}: {' '.join(shlex.quote(c) for c in cmd)}")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                     start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with open(self.log_path, "w") as f:
            for raw in iter(self.proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace")
                f.write(line)
                f.flush()
                m = ADDR_RE.search(line)
                if m and self.address is None and ("[serve_lerobot]" in line or "[vla serve]" in line):
                    self.address = m.group(1)
                    self._ready.set()
        self._ready.set()

    def wait(self, timeout_s: float = 300.0) -> str:
        if not self._ready.wait(timeout_s) or self.address is None:
            self.stop()
            tail = open(self.log_path).read()[-2000:] if os.path.exists(self.log_path) else ""
            raise RuntimeError(f"server {self.name} did not come up (exit {self.proc.poll()}); log tail:\n{tail}")
        return self.address

    def stop(self) -> None:
        if self.proc.poll() is None:
            _killpg(self.proc, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                _killpg(self.proc, signal.SIGKILL)
                self.proc.wait(10)


class busy_load:
    """`n` background processes that each spin one core (a pure-Python loop) while the block runs: the "background
    load" of the latency figures."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(0.5 if self.n else 0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def measure_latency(servers: dict, observations: list[dict], warmup: int = 3) -> dict:
    """Interleaved: observation i goes to every server in turn, the order rotating with i. Reset before each request
    (untimed), as common.measure does."""
    from robot_bridge.client import PolicyClient

    clients = {n: PolicyClient(a, timeout_ms=120_000, retries=0) for n, a in servers.items()}
    names = list(clients)
    rec = {n: {"infer_ms": [], "model_ms": [], "rtt_ms": [], "nfe": []} for n in names}
    try:
        for o in observations[:warmup]:
            for n in names:
                clients[n].infer(o)
        t0 = time.time()
        for i, o in enumerate(observations):
            order = names[i % len(names):] + names[:i % len(names)]
            for n in order:
                clients[n].reset()
                r = clients[n].infer(o)
                for k in rec[n]:
                    rec[n][k].append(float(r["timing"][k]))
            if (i + 1) % max(1, len(observations) // 5) == 0:
                log(f"latency: {i + 1}/{len(observations)} observations ({time.time() - t0:.0f} s) " + ", ".join(
                    f"{n} p50 {np.median(rec[n]['infer_ms']):.1f} ms" for n in names))
    finally:
        for c in clients.values():
            c.close()
    return {n: {"chunk_ms_p50": pct(v["infer_ms"], 50), "chunk_ms_p99": pct(v["infer_ms"], 99),
                "model_ms_p50": pct(v["model_ms"], 50), "rtt_ms_p50": pct(v["rtt_ms"], 50),
                "rtt_ms_p99": pct(v["rtt_ms"], 99), "nfe": pct(v["nfe"], 50), "latency_n": len(v["infer_ms"])}
            for n, v in rec.items()}


def _config(path: str) -> dict:
    f = os.path.join(path, "config.json")
    return json.load(open(f)) if os.path.isfile(f) else {}


def ours_train_record(path: str) -> dict:
    """The recipe's training record: config.json's train_summary (`vla export` keeps it) or the train_summary.json
    that `vla train` writes next to policy/."""
    s = _config(path).get("train_summary")
    for p in (os.path.join(path, "train_summary.json"), os.path.join(os.path.dirname(os.path.normpath(path)),
                                                                      "train_summary.json")):
        if s is None and os.path.isfile(p):
            s = json.load(open(p))
    if not s:
        return {}
    return {"train_minutes": round(s["train_seconds"] / 60.0, 2) if s.get("train_seconds") else None,
            "train_samples_per_s": s.get("samples_per_s"), "train_steps": s.get("steps"),
            "train_tasks": s.get("tasks")}


def budget_minutes(task: str, ours_path: str | None, given: dict) -> tuple[float, str]:
    """Wall-clock training budget of a peer on `task`: --minutes TASK=MIN, else the share of our recipe's training
    time that went to this task (a multi-task recipe's sampling weights; equal shares under uniform or frame
    sampling), else DEFAULT_MINUTES. -> (minutes, where it came from)."""
    if task in given:
        return float(given[task]), "--minutes"
    rec = ours_train_record(ours_path) if ours_path else {}
    if rec.get("train_minutes"):
        tasks = rec.get("train_tasks") or [task]
        data = (_config(ours_path).get("train") or {}).get("data") or {}
        w = data.get("task_weights") if data.get("task_sampling") == "weighted" else None
        share = float(w[task]) / sum(float(w[t]) for t in tasks) if w and task in w else 1.0 / len(tasks)
        how = (f"{share:.3f} of {rec['train_minutes']} min ({os.path.basename(os.path.normpath(ours_path))}, "
               f"{len(tasks)} task(s){', sampling weights' if w else ''})")
        return round(rec["train_minutes"] * share, 2), how
    if task in DEFAULT_MINUTES:
        return DEFAULT_MINUTES[task], "DEFAULT_MINUTES (our recipe's recorded time)"
    raise SystemExit(f"--minutes: no training budget for {task}: our checkpoint {ours_path} records no training time; "
                     f"give --minutes {task}=MIN")


def headline(rows: list[dict]) -> dict:
    ratios, lat, per = [], [], {}
    for task in sorted({r["task"] for r in rows}):
        rs = [r for r in rows if r["task"] == task]
        ours = next((r for r in rs if r.get("kind") == "ours"), None)
        peers = [r for r in rs if r.get("kind") == "peer" and r.get("success") is not None]
        act = next((r for r in rs if r.get("peer") == "act"), None)
        d = {}
        if ours and ours.get("success") is not None and peers:
            best = max(r["success"] for r in peers)
            d["best_peer_success"] = best
            d["ours_minus_best_peer_success"] = ours["success"] - best
            # the figure: over tasks without language, our success minus the best peer's
            if task != "PickColor":
                ratios.append(d["ours_minus_best_peer_success"])
        if ours and act and ours.get("chunk_ms_p50") and act.get("chunk_ms_p50"):
            d["ours_over_act_latency"] = ours["chunk_ms_p50"] / act["chunk_ms_p50"]
            lat.append(d["ours_over_act_latency"])
        if ours and act:  # per (threads, load): ours / ACT-small, p50 and p99, per chunk and per executed action
            theirs = {(x["threads"], x["load"]): x for x in act.get("latency", [])}
            d["latency_vs_act"] = [
                {"threads": x["threads"], "load": x["load"],
                 **{f"{k}_ratio": x[k] / t[k] for k in ("chunk_ms_p50", "chunk_ms_p99", "action_ms_p50")
                    if x.get(k) and t.get(k)}}
                for x in ours.get("latency", []) if (t := theirs.get((x["threads"], x["load"])))]
        per[task] = d
    return {"ours_over_best_peer_success_min": min(ratios) if ratios else None,
            "ours_over_act_latency": max(lat) if lat else None, "per_task": per}


def plot(result: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    tasks = sorted({r["task"] for r in rows})
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    w = 0.8 / max(1, len(policies))
    x = np.arange(len(tasks))
    # a latency-only run (--episodes 0): the left panel shows the loaded p99 (2 threads, one busy process) instead
    loaded = not any(r.get("success") is not None for r in rows)
    for j, p in enumerate(policies):
        get = {r["task"]: r for r in rows if r["policy"] == p}
        xs = x + (j - (len(policies) - 1) / 2) * w
        if loaded:
            busy = {t: next((e for e in get[t].get("latency", []) if (e["threads"], e["load"]) == (2, 1)), None)
                    for t in get}
            v = [busy[t]["chunk_ms_p99"] if busy.get(t) else 0 for t in tasks]
            axes[0].bar(xs, v, w, label=p)
            for xi, vi in zip(xs, v):
                axes[0].text(xi, vi + 1, f"{vi:.0f}" if vi else "n/a", ha="center", va="bottom", fontsize=7)
        have = [t in get and get[t].get("success") is not None for t in tasks]
        succ = [100 * get[t]["success"] if h else 0 for t, h in zip(tasks, have)]
        p50 = [get[t].get("chunk_ms_p50") or 0 if t in get else 0 for t in tasks]
        p99 = [get[t].get("chunk_ms_p99") or 0 if t in get else 0 for t in tasks]
        if not loaded:
            axes[0].bar(xs, succ, w, label=p)
            for xi, s, t, h in zip(xs, succ, tasks, have):
                n = get.get(t, {}).get("episodes")
                axes[0].text(xi, s + 1, f"{s:.0f}%\nn={n}" if h else "n/a", ha="center", va="bottom", fontsize=7)
        axes[1].bar(xs, p50, w, color=f"C{j}", label=p)
        axes[1].errorbar(xs, p50, yerr=[np.zeros(len(p50)), np.maximum(0, np.subtract(p99, p50))], fmt="none",
                         ecolor="k", capsize=3, lw=1)
        for xi, v, v99 in zip(xs, p50, p99):
            if v:
                axes[1].text(xi, v / 2, f"p50 {v:.0f}\np99 {v99:.0f}", ha="center", va="center", fontsize=7, color="w")
            else:
                axes[1].text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7)
    for ax in axes:
        ax.set_xticks(x, tasks)
    if loaded:
        axes[0].set_ylabel("chunk latency p99 (ms)")
        axes[0].set_title("2 threads, one busy process beside (no evaluation in this run)")
    else:
        axes[0].set_ylabel("success (%)")
        axes[0].set_ylim(0, 115)
        axes[0].set_title("closed-loop success (same seeds, our harness)")
    threads = sorted({r.get("threads") for r in rows if r.get("threads")}) or [result["settings"]["threads"]]
    axes[1].set_ylabel("chunk latency (ms): p50, whisker to p99")
    axes[1].set_title(f"chunk latency, CPU, {','.join(map(str, threads))} thread(s)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = png + ".tmp"
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, png)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", action="append", help="task names (repeat or comma-separate; default Lift)")
    ap.add_argument("--data", action="append", help="demo file per task: TASK=PATH or PATH (default data/<task>.hdf5)")
    ap.add_argument("--lerobot-dataset", action="append",
                    help="an existing LeRobot export per task (TASK=DIR or DIR): skips the export")
    ap.add_argument("--export-size", type=int, default=64,
                    help="frames exported at this size (our tiny models see 64 px; 0: as stored)")
    ap.add_argument("--exports", default=os.path.join(ROOT, "runs", "peers", "exports"),
                    help="where exports go: <exports>/<task>_lerobot (default under runs/, which git ignores)")
    ap.add_argument("--runs", default=os.path.join(ROOT, "runs", "peers"),
                    help="training runs: <runs>/<task>_<peer>; logs in <runs>/logs, evaluations in <runs>/eval")
    ap.add_argument("--ours", action="append", help="our checkpoint per task: TASK=PATH or PATH "
                                                    "(default Lift=vla/pretrained/lift_tiny)")
    ap.add_argument("--peers", default="act,diffusion@Lift",
                    help="comma list of act, diffusion; PEER@TASK+TASK limits a peer to those tasks (default: "
                         "Diffusion-small on Lift only: each of its evaluations costs minutes)")
    ap.add_argument("--minutes", action="append",
                    help="training budget per peer and task (wall clock): TASK=MIN or MIN (every task); default: the "
                         "share of our recipe's training time spent on the task (see budget_minutes)")
    ap.add_argument("--train-steps", type=int, help="train exactly this many steps (smoke tests; --minutes caps it)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1000, help="training seed")
    ap.add_argument("--train-threads", type=int, help="torch threads for training (default: torch's choice)")
    ap.add_argument("--act-args", default="", help="extra lerobot-train flags for ACT (one string)")
    ap.add_argument("--diffusion-args", default="", help="extra lerobot-train flags for Diffusion (one string)")
    ap.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    ap.add_argument("--skip-train", action="store_true", help="use existing runs only")
    ap.add_argument("--episodes", type=int, default=50,
                    help="evaluation episodes per policy and task; 0: latency only (a peer trained for --train-steps "
                         "has the compute of a fully trained one)")
    ap.add_argument("--seed-base", type=int, help="first evaluation seed (default: the harness's EVAL_SEED_BASE)")
    ap.add_argument("--image-size", type=int, default=128, help="rendered camera size (the servers resize)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every policy server in the evaluation")
    ap.add_argument("--latency-threads", default="1,2", help="comma list: torch threads of the servers for the "
                                                             "interleaved latency (servers restarted per value)")
    ap.add_argument("--latency-load", default="0,1",
                    help="comma list: background busy-loop processes (one core each) during the latency runs")
    ap.add_argument("--act-n-action-steps", type=int,
                    help="actions executed per ACT chunk (default: the checkpoint's n_action_steps, LeRobot's 100)")
    ap.add_argument("--latency-obs", type=int, default=100, help="observations for the interleaved latency")
    ap.add_argument("--peer-python", default=os.path.join(ROOT, ".venv-peers", "bin", "python"))
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "peers.json"))
    return ap.parse_args(argv)


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError as e:
        raise SystemExit(f"--{what}: expected a comma list of integers ({e})")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class PeersRun:
    """One invocation: the settings resolved from the arguments, the result (rewritten after every step) and the
    steps per task: export, train the peers, serve and evaluate, latency."""

    def __init__(self, args: argparse.Namespace, argv=None):
        self.args = args
        tasks = self.tasks = [t for item in (args.tasks or [",".join(DEFAULT_TASKS)]) for t in item.split(",") if t]
        self.peer_tasks = {}  # peer -> tasks it runs on
        for item in (p for p in args.peers.split(",") if p):
            name, _, only = item.partition("@")
            self.peer_tasks[name] = [t for t in only.split("+") if t] if only else list(tasks)
        bad = [p for p in self.peer_tasks if p not in PEERS]
        if bad:
            raise SystemExit(f"--peers: unknown {bad}; expected some of {list(PEERS)}")
        self.lat_threads = _int_list(args.latency_threads, "latency-threads")
        self.lat_loads = _int_list(args.latency_load, "latency-load")
        if not os.path.isfile(args.peer_python):
            raise SystemExit(f"{args.peer_python}: no peer venv (bash benchmarks/peers/setup.sh)")
        self.given = per_task_raw(args.data, tasks, "data")  # paths given: relative to the current directory
        self.data = {t: [os.path.abspath(f) if t in self.given else os.path.join(ROOT, f)
                         for f in (self.given.get(t) or DEFAULT_DATA.get(t, f"data/{t.lower()}.hdf5")).split(",")]
                     for t in tasks}
        self.lr_data = per_task(args.lerobot_dataset, tasks, None, "lerobot-dataset")
        self.ours = per_task(args.ours, tasks, DEFAULT_OURS, "ours")
        given_minutes = per_task_raw(args.minutes, tasks, "minutes")
        self.budgets = {t: budget_minutes(t, self.ours.get(t), given_minutes) for t in tasks}
        self.out = os.path.abspath(args.out)
        self.png = os.path.splitext(self.out)[0] + ".png"
        self.runs = os.path.abspath(args.runs)
        self.logs = os.path.join(self.runs, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
        self.vla_cmd = [sys.executable, "-m", "vla.cli"]
        self.here = os.path.dirname(os.path.abspath(__file__))
        self.result = {
            "rows": [], "ours_over_best_peer_success_min": None, "ours_over_act_latency": None,
            "command": command(__file__, argv),
            "settings": {"tasks": tasks, "peers": {PEERS[p]: ts for p, ts in self.peer_tasks.items()},
                         "minutes": {t: m for t, (m, _) in self.budgets.items()},
                         "minutes_from": {t: how for t, (_, how) in self.budgets.items()},
                         "latency_threads": self.lat_threads, "latency_load": self.lat_loads,
                         "train_steps": args.train_steps, "batch_size": args.batch_size, "episodes": args.episodes,
                         "threads": args.threads, "image_size": args.image_size, "eval_mode": "sync",
                         "latency_obs": args.latency_obs, "act_n_action_steps": args.act_n_action_steps,
                         "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
            "errors": []}

    def save(self) -> None:
        self.result.update(headline(self.result["rows"]))
        self.result["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(self.out, self.result)
        try:
            plot(self.result, self.png)
        except Exception as e:  # noqa: BLE001 - a plot never costs the numbers
            log(f"plot failed: {type(e).__name__}: {e}")

    def error(self, step: str, e: BaseException) -> None:
        log(f"ERROR in {step}: {type(e).__name__}: {e}")
        self.result["errors"].append({"step": step, "error": f"{type(e).__name__}: {e}"[:2000]})
        self.save()

    def publish(self, task: str, rows: dict) -> None:
        self.result["rows"] = [r for r in self.result["rows"] if r["task"] != task] + list(rows.values())
        self.save()

    def stream(self, cmd: list[str], tag: str, log_name: str, timeout_s: float | None = None) -> int:
        return run_streamed(cmd, tag, os.path.join(self.logs, log_name), timeout_s=timeout_s, env=self.env)

    def collect_missing(self) -> None:
        """A fresh clone: the demos come from the collection stage of the recipes' own script."""
        missing = [f for t in self.tasks if t not in self.given and t not in self.lr_data for f in self.data[t]
                   if not os.path.isfile(f)]
        if missing:
            log(f"demo files missing: {[os.path.relpath(f, ROOT) for f in missing]}; collecting them")
            rc = self.stream([sys.executable, os.path.join(self.here, "multitask.py"), "--stages", "collect"],
                             "collect", "collect.log")
            if rc != 0:
                raise SystemExit(f"benchmarks/multitask.py --stages collect exited {rc} (see {self.logs}/collect.log)")

    def export(self, task: str) -> str:
        """1. the task's demos as a LeRobot v3 dataset (an existing export is reused) -> its folder."""
        ds = self.lr_data.get(task) or os.path.abspath(os.path.join(self.args.exports, f"{task.lower()}_lerobot"))
        if os.path.isfile(os.path.join(ds, "meta", "info.json")):
            log(f"{task}: using the LeRobot dataset {ds}")
            return ds
        missing = [f for f in self.data[task] if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"demo files {missing} not found (--data {task}=PATH[,PATH...])")
        size = ["--image-size", str(self.args.export_size)] if self.args.export_size else []
        rc = self.stream(self.vla_cmd + ["data", "export", *self.data[task], "--out", ds] + size, f"export {task}",
                         f"export_{task.lower()}.log")
        if rc != 0:
            raise RuntimeError(f"vla data export exited {rc}")
        return ds

    def train_peer(self, task: str, p: str, ds: str) -> dict:
        """2. one peer trained for the task's budget with LeRobot's trainer (a finished run of that budget is
        reused) -> its train_summary.json."""
        args, minutes = self.args, self.budgets[task][0]
        run_dir = os.path.join(self.runs, f"{task.lower()}_{p}")
        summary_path = os.path.join(run_dir, "train_summary.json")
        prev = json.load(open(summary_path)) if os.path.isfile(summary_path) else None
        finished = bool(prev and prev.get("ok"))
        same_budget = finished and abs(float(prev.get("budget_minutes") or 0) - minutes) <= 0.01 * minutes
        reusable = finished and (same_budget or bool(args.train_steps))
        if finished and not reusable:
            log(f"{task}/{PEERS[p]}: the run in {run_dir} had {prev.get('budget_minutes')} min, the budget is "
                f"{minutes:g} min: training again")
        if reusable and not args.retrain:
            log(f"{task}/{PEERS[p]}: reusing the finished run {run_dir} (--retrain to train again)")
        elif args.skip_train:
            raise FileNotFoundError(f"no finished run in {run_dir} (--skip-train)")
        else:
            cmd = [args.peer_python, os.path.join(self.here, "peers", "train_lerobot.py"), "--policy", p,
                   "--dataset", ds, "--out", run_dir, "--minutes", str(minutes), "--batch-size", str(args.batch_size),
                   "--num-workers", str(args.num_workers), "--seed", str(args.seed)]
            if os.path.isdir(os.path.join(run_dir, "train")):
                cmd.append("--overwrite")
            if args.train_steps:
                cmd += ["--steps", str(args.train_steps)]
            if args.train_threads:
                cmd += ["--threads", str(args.train_threads)]
            extra = shlex.split(args.act_args if p == "act" else args.diffusion_args)
            if extra:
                cmd += ["--"] + extra
            log(f"{task}/{PEERS[p]}: training for {minutes:g} min ({self.budgets[task][1]})")
            rc = self.stream(cmd, f"train {p}", f"train_{task.lower()}_{p}.log", timeout_s=minutes * 60 * 2 + 900)
            if rc != 0 or not os.path.isfile(summary_path):
                raise RuntimeError(f"train_lerobot.py exited {rc}")
        return {**json.load(open(summary_path)), "run_dir": run_dir}

    def contenders(self, task: str, trained: dict) -> tuple[dict, dict]:
        """3. the policies to serve -> ({name: row}, {name: server command without --threads})."""
        rows, cmds = {}, {}
        for p, s in trained.items():
            cmds[PEERS[p]] = [self.args.peer_python, os.path.join(self.here, "peers", "serve_lerobot.py"), "--policy",
                              s["run_dir"], "--bind", "tcp://127.0.0.1:0"]
            if p == "act" and self.args.act_n_action_steps:
                cmds[PEERS[p]] += ["--n-action-steps", str(self.args.act_n_action_steps)]
            rows[PEERS[p]] = {"policy": PEERS[p], "task": task, "kind": "peer", "peer": p,
                              "params": s.get("params"), "train_minutes": s.get("train_minutes"),
                              "train_samples_per_s": s.get("samples_per_s"), "train_steps": s.get("steps_done"),
                              "train_batch_size": s.get("batch_size"), "train_threads": s.get("threads"),
                              "checkpoint": s.get("checkpoint"), "checkpoint_mb": s.get("checkpoint_mb")}
        ours = self.ours.get(task)
        if not ours:
            log(f"{task}: no --ours checkpoint; peers only")
            return rows, cmds
        cmds["ours"] = self.vla_cmd + ["serve", "--policy", ours, "--bind", "tcp://127.0.0.1:0"]
        rows["ours"] = {"policy": "ours", "task": task, "kind": "ours", "checkpoint": os.path.abspath(ours),
                        "checkpoint_name": os.path.basename(os.path.normpath(ours)), "train_samples_per_s": None,
                        **ours_train_record(ours)}
        rows["ours"].update(recipe_train_minutes=rows["ours"].get("train_minutes"),
                            train_minutes=self.budgets[task][0], train_minutes_from=self.budgets[task][1])
        return rows, cmds

    def start(self, task: str, rows: dict, cmds: dict, threads: int) -> tuple[dict, dict]:
        """Every policy's server with `threads` torch threads -> ({name: Server}, {name: address}); a server that
        does not come up is an error and left out."""
        from robot_bridge.client import PolicyClient

        servers = {n: Server(n, cmd + ["--threads", str(threads)], os.path.join(
            self.logs, f"serve_{task.lower()}_{_safe(n)}_t{threads}.log"), env=self.env) for n, cmd in cmds.items()}
        addrs = {}
        for n, srv in list(servers.items()):
            try:
                addrs[n] = srv.wait()
                with PolicyClient(addrs[n], timeout_ms=30_000) as c:
                    meta = c.hello()
                rows[n].update(params=rows[n].get("params") or (meta.get("policy") or {}).get("parameters"),
                               chunk_size=meta.get("chunk_size"), n_action_steps=meta.get("n_action_steps"),
                               nfe=(meta.get("policy") or {}).get("nfe"))
                log(f"{n} on {addrs[n]} ({threads} thread(s); chunk {meta.get('chunk_size')}, "
                    f"n_action_steps {meta.get('n_action_steps')})")
            except Exception as e:  # noqa: BLE001
                self.error(f"{task}/{n}: serve", e)
                servers.pop(n).stop()
                addrs.pop(n, None)
        return servers, addrs

    def evaluate(self, task: str, n: str, addr: str) -> dict:
        """4. closed-loop evaluation of one served policy with our harness -> its row's fields."""
        args = self.args
        edir = os.path.join(self.runs, "eval", f"{task.lower()}_{_safe(n)}")
        cmd = self.vla_cmd + ["eval", "--server", addr, "--task", task, "--episodes", str(args.episodes), "--mode",
                              "sync", "--out", edir, "--videos", "0", "--image-size", str(args.image_size)]
        if args.seed_base is not None:
            cmd += ["--seed-base", str(args.seed_base)]
        log(f"{task}/{n}: evaluating {args.episodes} episodes")
        sfile = os.path.join(edir, f"summary_{task}.json")
        if os.path.exists(sfile):
            os.remove(sfile)
        rc = self.stream(cmd, f"eval {n}", f"eval_{task.lower()}_{os.path.basename(edir)}.log")
        if rc != 0 or not os.path.isfile(sfile):
            raise RuntimeError(f"vla eval exited {rc}")
        s = json.load(open(sfile))
        log(f"{task}/{n}: success {s['success_rate']:.0%} over {s['episodes']} episodes")
        return {"success": s["success_rate"], "episodes": s["episodes"], "mean_length": s["mean_length"],
                "replan_every": s.get("replan_every"), "eval_chunk_ms_p50": s.get("chunk_ms_p50"),
                "eval_seconds": s.get("seconds"), "threads": args.threads}

    def evaluate_all(self, task: str, rows: dict, cmds: dict) -> None:
        servers, addrs = self.start(task, rows, cmds, self.args.threads)
        try:  # one policy at a time
            for n, addr in addrs.items():
                try:
                    rows[n].update(self.evaluate(task, n, addr))
                except Exception as e:  # noqa: BLE001
                    rows[n]["threads"] = self.args.threads
                    self.error(f"{task}/{n}: eval", e)
                self.publish(task, rows)
        finally:
            for srv in servers.values():
                srv.stop()

    def latency_observations(self, task: str, ds: str) -> tuple[str, list[dict]]:
        src = self.data[task][0] if os.path.isfile(self.data[task][0]) else ds
        try:
            return src, sample_observations(src, n=self.args.latency_obs, seed=0, task=task)
        except ValueError:  # the file names its task otherwise (a LeRobot export: the instruction)
            return src, sample_observations(src, n=self.args.latency_obs, seed=0)

    def latency(self, task: str, rows: dict, cmds: dict, src: str, obs: list[dict], threads: int) -> None:
        """5. chunk latency of every policy over the same observations, interleaved, under each background load."""
        servers, addrs = self.start(task, rows, cmds, threads)
        try:
            for load in self.lat_loads:
                live = {n: a for n, a in addrs.items() if servers[n].proc.poll() is None}
                if not live:
                    break
                log(f"{task}: chunk latency of {list(live)}, {threads} thread(s), {load} busy process(es), over "
                    f"{len(obs)} observations of {src}, interleaved")
                with busy_load(load):
                    lat = measure_latency(live, obs)
                for n, d in lat.items():
                    steps = rows[n].get("n_action_steps") or rows[n].get("chunk_size")
                    d.update(threads=threads, load=load,
                             action_ms_p50=d["chunk_ms_p50"] / steps if steps and d["chunk_ms_p50"] else None)
                    rows[n]["latency"] = [x for x in rows[n].get("latency", [])
                                          if (x["threads"], x["load"]) != (threads, load)] + [d]
                    if threads == self.args.threads and load == 0:  # the row's headline figures
                        rows[n].update({k: v for k, v in d.items() if k not in ("threads", "load")},
                                       latency_source=src)
        finally:
            for srv in servers.values():
                srv.stop()

    def task(self, task: str) -> None:
        try:
            ds = self.export(task)
        except Exception as e:  # noqa: BLE001
            return self.error(f"{task}: export", e)
        trained = {}
        for p in (p for p in self.peer_tasks if task in self.peer_tasks[p]):
            try:
                trained[p] = self.train_peer(task, p, ds)
            except Exception as e:  # noqa: BLE001
                self.error(f"{task}/{PEERS[p]}: train", e)
        rows, cmds = self.contenders(task, trained)
        if self.args.episodes > 0:
            self.evaluate_all(task, rows, cmds)
        if self.args.latency_obs <= 0 or not cmds:
            return
        try:
            src, obs = self.latency_observations(task, ds)
        except Exception as e:  # noqa: BLE001
            return self.error(f"{task}: latency observations", e)
        for threads in self.lat_threads:
            try:
                self.latency(task, rows, cmds, src, obs, threads)
            except Exception as e:  # noqa: BLE001
                self.error(f"{task}: latency ({threads} threads)", e)
            self.publish(task, rows)

    def print_table(self) -> None:
        cols = ("policy", "task", "success", "episodes", "chunk_ms_p50", "chunk_ms_p99", "params", "train_minutes",
                "train_samples_per_s")
        print("\t".join(cols))
        for r in self.result["rows"]:
            print("\t".join("-" if r.get(c) is None else (f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]))
                            for c in cols))


def main(argv=None) -> int:
    bench = PeersRun(parse_args(argv), argv)
    t_start = time.time()
    bench.collect_missing()
    for task in bench.tasks:
        bench.task(task)
    bench.result["seconds"] = round(time.time() - t_start, 1)
    bench.save()
    bench.print_table()
    log(f"wrote {bench.out} and {bench.png}; ours/best peer success (min over tasks): "
        f"{bench.result['ours_over_best_peer_success_min']}, ours/ACT latency: {bench.result['ours_over_act_latency']}")
    return 1 if bench.result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
