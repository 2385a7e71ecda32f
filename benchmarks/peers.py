"""Peers: LeRobot's ACT and Diffusion Policy against our policy, trained on the same demos, evaluated by our harness
through our ZeroMQ protocol (GitHub issue "peers").

Runs in the PROJECT venv; the LeRobot side runs in the peer venv (`bash benchmarks/peers/setup.sh` makes it):

    .venv/bin/python benchmarks/peers.py --tasks Lift --minutes 60 --episodes 50 --threads 2

Per task (default Lift):
 1. export the demos (data/<task>.hdf5, --data) to a LeRobot v3.0 folder (runs/peers/exports/<task>_lerobot, kept and
    reused; --lerobot-dataset TASK=DIR takes an existing export);
 2. train ACT-small and Diffusion-small with LeRobot's own trainer for --minutes each
    (benchmarks/peers/train_lerobot.py in the peer venv; runs/peers/<task>_<peer>; a finished run is reused unless
    --retrain);
 3. serve each checkpoint with benchmarks/peers/serve_lerobot.py (peer venv) and our policy (--ours, default
    vla/pretrained/lift_tiny for Lift) with `vla serve`, all with --threads torch threads, each in its own process;
 4. evaluate each server with our harness (`vla eval --server ... --mode sync`: the same episode seeds for all);
 5. measure chunk latency over the same observations (--latency-obs frames of the task's demos), interleaved: every
    observation goes to every policy in turn (the order rotates), so background load hits all alike. chunk_ms is the
    server's `infer_ms` (the policy's infer_batch: pre-processing + model + post-processing; no transport);
    rtt_ms (client round trip) is recorded too.
Writes --out (default benchmarks/results/peers.json; rewritten after every step, so a failure later keeps what was
measured) and a PNG next to it (success and chunk latency per policy per task):
    {"rows": [{"policy", "task", "success", "episodes", "chunk_ms_p50", "chunk_ms_p99", "threads", "params",
               "train_minutes", "train_samples_per_s", ...}],
     "ours_over_best_peer_success_min", "ours_over_act_latency", "command", ...}
ours_over_best_peer_success_min: min over tasks without language of ours' success minus the best peer's (the issue's
definition; a difference, despite the name);
ours_over_act_latency: max over tasks of ours' chunk_ms_p50 / ACT-small's (< 1: ours is faster).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results_io import write_json  # noqa: E402

PEERS = {"act": "ACT-small", "diffusion": "Diffusion-small"}
DEFAULT_OURS = {"Lift": os.path.join(ROOT, "vla", "pretrained", "lift_tiny")}
ADDR_RE = re.compile(r" on (tcp://[0-9.]+:\d+)")


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def per_task(values: list[str] | None, tasks: list[str], default: dict | str | None, what: str) -> dict:
    """['Lift=path', ...] or ['path'] (every task) -> {task: absolute path}; str defaults may hold {task} (lower case)
    and are relative to the repository root, given paths to the current directory."""
    out = {}
    for v in values or []:
        if "=" in v:
            t, p = v.split("=", 1)
            out[t] = os.path.abspath(p)
        else:
            out.update({t: os.path.abspath(v) for t in tasks})
    for t in tasks:
        if t not in out and default is not None:
            d = default.get(t) if isinstance(default, dict) else default.format(task=t.lower())
            if d:
                out[t] = d
    unknown = set(out) - set(tasks)
    if unknown:
        raise SystemExit(f"--{what}: tasks {sorted(unknown)} are not in --tasks {tasks}")
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


def pct(x: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(x), q)) if x else None


def measure_latency(servers: dict, observations: list[dict], warmup: int = 3) -> dict:
    """Interleaved: observation i goes to every server in turn, the order rotating with i. Reset before each request
    (untimed), as benchmarks/latency.py does."""
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


def ours_train_record(path: str) -> dict:
    """train_summary.json that `vla train` writes next to policy/ (absent for the shipped checkpoints)."""
    for p in (os.path.join(path, "train_summary.json"), os.path.join(os.path.dirname(os.path.normpath(path)),
                                                                      "train_summary.json")):
        if os.path.isfile(p):
            s = json.load(open(p))
            return {"train_minutes": round(s["train_seconds"] / 60.0, 2) if s.get("train_seconds") else None,
                    "train_samples_per_s": s.get("samples_per_s"), "train_steps": s.get("steps")}
    return {}


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
            if task != "PickColor":  # the figure: over tasks without language, our success minus the best peer's
                ratios.append(d["ours_minus_best_peer_success"])
        if ours and act and ours.get("chunk_ms_p50") and act.get("chunk_ms_p50"):
            d["ours_over_act_latency"] = ours["chunk_ms_p50"] / act["chunk_ms_p50"]
            lat.append(d["ours_over_act_latency"])
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
    for j, p in enumerate(policies):
        get = {r["task"]: r for r in rows if r["policy"] == p}
        have = [t in get and get[t].get("success") is not None for t in tasks]
        succ = [100 * get[t]["success"] if h else 0 for t, h in zip(tasks, have)]
        p50 = [get[t].get("chunk_ms_p50") or 0 if t in get else 0 for t in tasks]
        p99 = [get[t].get("chunk_ms_p99") or 0 if t in get else 0 for t in tasks]
        xs = x + (j - (len(policies) - 1) / 2) * w
        b = axes[0].bar(xs, succ, w, label=p)
        for xi, s, t, h in zip(xs, succ, tasks, have):
            n = get.get(t, {}).get("episodes")
            axes[0].text(xi, s + 1, f"{s:.0f}%\nn={n}" if h else "n/a", ha="center", va="bottom", fontsize=7)
        axes[1].bar(xs, p50, w, color=b.patches[0].get_facecolor(), label=p)
        axes[1].errorbar(xs, p50, yerr=[np.zeros(len(p50)), np.maximum(0, np.subtract(p99, p50))], fmt="none",
                         ecolor="k", capsize=3, lw=1)
        for xi, v, v99 in zip(xs, p50, p99):
            if v:
                axes[1].text(xi, v / 2, f"p50 {v:.0f}\np99 {v99:.0f}", ha="center", va="center", fontsize=7, color="w")
            else:
                axes[1].text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7)
    for ax in axes:
        ax.set_xticks(x, tasks)
    axes[0].set_ylabel("success (%)")
    axes[0].set_ylim(0, 115)
    axes[0].set_title("closed-loop success (same seeds, our harness)")
    threads = sorted({r.get("threads") for r in rows if r.get("threads")})
    axes[1].set_ylabel("chunk latency (ms): p50, whisker to p99")
    axes[1].set_title(f"chunk latency, CPU, {','.join(map(str, threads))} thread(s)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = png + ".tmp"
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, png)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument("--peers", default="act,diffusion", help="comma list of act, diffusion")
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget per peer and task (wall clock)")
    ap.add_argument("--train-steps", type=int, help="train exactly this many steps (smoke tests; --minutes caps it)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1000, help="training seed")
    ap.add_argument("--train-threads", type=int, help="torch threads for training (default: torch's choice)")
    ap.add_argument("--act-args", default="", help="extra lerobot-train flags for ACT (one string)")
    ap.add_argument("--diffusion-args", default="", help="extra lerobot-train flags for Diffusion (one string)")
    ap.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    ap.add_argument("--skip-train", action="store_true", help="use existing runs only")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed-base", type=int, help="first evaluation seed (default: the harness's EVAL_SEED_BASE)")
    ap.add_argument("--image-size", type=int, default=128, help="rendered camera size (the servers resize)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every policy server")
    ap.add_argument("--act-n-action-steps", type=int,
                    help="actions executed per ACT chunk (default: the checkpoint's n_action_steps, LeRobot's 100)")
    ap.add_argument("--latency-obs", type=int, default=100, help="observations for the interleaved latency")
    ap.add_argument("--peer-python", default=os.path.join(ROOT, ".venv-peers", "bin", "python"))
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "peers.json"))
    args = ap.parse_args(argv)

    tasks = [t for item in (args.tasks or ["Lift"]) for t in item.split(",") if t]
    peers = [p for p in args.peers.split(",") if p]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise SystemExit(f"--peers: unknown {bad}; expected some of {list(PEERS)}")
    if not os.path.isfile(args.peer_python):
        raise SystemExit(f"{args.peer_python}: no peer venv (bash benchmarks/peers/setup.sh)")
    data = per_task(args.data, tasks, os.path.join(ROOT, "data", "{task}.hdf5"), "data")
    lr_data = per_task(args.lerobot_dataset, tasks, None, "lerobot-dataset")
    ours = per_task(args.ours, tasks, DEFAULT_OURS, "ours")
    out = os.path.abspath(args.out)
    png = os.path.splitext(out)[0] + ".png"
    runs = os.path.abspath(args.runs)
    logs = os.path.join(runs, "logs")
    os.makedirs(logs, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    vla_cmd = [sys.executable, "-m", "vla.cli"]
    here = os.path.dirname(os.path.abspath(__file__))

    result = {"rows": [], "ours_over_best_peer_success_min": None, "ours_over_act_latency": None,
              "command": "python benchmarks/peers.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                                           else argv)),
              "settings": {"tasks": tasks, "peers": [PEERS[p] for p in peers], "minutes": args.minutes,
                           "train_steps": args.train_steps, "batch_size": args.batch_size, "episodes": args.episodes,
                           "threads": args.threads, "image_size": args.image_size, "eval_mode": "sync",
                           "latency_obs": args.latency_obs, "act_n_action_steps": args.act_n_action_steps,
                           "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
              "errors": []}

    def save():
        result.update({k: v for k, v in headline(result["rows"]).items()})
        result["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(out, result)
        try:
            plot(result, png)
        except Exception as e:  # noqa: BLE001 - a plot never costs the numbers
            log(f"plot failed: {type(e).__name__}: {e}")

    def error(step: str, e: BaseException) -> None:
        log(f"ERROR in {step}: {type(e).__name__}: {e}")
        result["errors"].append({"step": step, "error": f"{type(e).__name__}: {e}"[:2000]})
        save()

    t_start = time.time()
    for task in tasks:
        tl = task.lower()
        # 1. export
        ds = lr_data.get(task) or os.path.abspath(os.path.join(args.exports, f"{tl}_lerobot"))
        try:
            if not os.path.isfile(os.path.join(ds, "meta", "info.json")):
                if not os.path.isfile(data.get(task, "")):
                    raise FileNotFoundError(f"demo file {data.get(task)} not found (--data {task}=PATH)")
                rc = run_streamed(vla_cmd + ["data", "export", data[task], "--out", ds]
                                  + (["--image-size", str(args.export_size)] if args.export_size else []), f"export {task}",
                                  os.path.join(logs, f"export_{tl}.log"), env=env)
                if rc != 0:
                    raise RuntimeError(f"vla data export exited {rc}")
            else:
                log(f"{task}: using the LeRobot dataset {ds}")
        except Exception as e:  # noqa: BLE001
            error(f"{task}: export", e)
            continue

        # 2. train the peers
        trained = {}
        for p in peers:
            run_dir = os.path.join(runs, f"{tl}_{p}")
            summary_path = os.path.join(run_dir, "train_summary.json")
            try:
                prev = json.load(open(summary_path)) if os.path.isfile(summary_path) else None
                if prev and prev.get("ok") and not args.retrain:
                    log(f"{task}/{PEERS[p]}: reusing the finished run {run_dir} (--retrain to train again)")
                elif args.skip_train:
                    raise FileNotFoundError(f"no finished run in {run_dir} (--skip-train)")
                else:
                    cmd = [args.peer_python, os.path.join(here, "peers", "train_lerobot.py"), "--policy", p,
                           "--dataset", ds, "--out", run_dir, "--minutes", str(args.minutes),
                           "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers),
                           "--seed", str(args.seed)]
                    if os.path.isdir(os.path.join(run_dir, "train")):
                        cmd.append("--overwrite")
                    if args.train_steps:
                        cmd += ["--steps", str(args.train_steps)]
                    if args.train_threads:
                        cmd += ["--threads", str(args.train_threads)]
                    extra = shlex.split(args.act_args if p == "act" else args.diffusion_args)
                    if extra:
                        cmd += ["--"] + extra
                    log(f"{task}/{PEERS[p]}: training for {args.minutes:g} min")
                    rc = run_streamed(cmd, f"train {p}", os.path.join(logs, f"train_{tl}_{p}.log"), env=env,
                                      timeout_s=args.minutes * 60 * 2 + 900)
                    if rc != 0 or not os.path.isfile(summary_path):
                        raise RuntimeError(f"train_lerobot.py exited {rc}")
                trained[p] = json.load(open(summary_path))
                trained[p]["run_dir"] = run_dir
            except Exception as e:  # noqa: BLE001
                error(f"{task}/{PEERS[p]}: train", e)

        # 3. serve
        servers: dict[str, Server] = {}
        rows: dict[str, dict] = {}
        try:
            for p, s in trained.items():
                cmd = [args.peer_python, os.path.join(here, "peers", "serve_lerobot.py"), "--policy", s["run_dir"],
                       "--bind", "tcp://127.0.0.1:0", "--threads", str(args.threads)]
                if p == "act" and args.act_n_action_steps:
                    cmd += ["--n-action-steps", str(args.act_n_action_steps)]
                servers[PEERS[p]] = Server(PEERS[p], cmd, os.path.join(logs, f"serve_{tl}_{p}.log"), env=env)
                rows[PEERS[p]] = {"policy": PEERS[p], "task": task, "kind": "peer", "peer": p,
                                  "params": s.get("params"), "train_minutes": s.get("train_minutes"),
                                  "train_samples_per_s": s.get("samples_per_s"), "train_steps": s.get("steps_done"),
                                  "train_batch_size": s.get("batch_size"), "train_threads": s.get("threads"),
                                  "checkpoint": s.get("checkpoint"), "checkpoint_mb": s.get("checkpoint_mb")}
            if task in ours:
                name = "ours"
                cmd = vla_cmd + ["serve", "--policy", ours[task], "--bind", "tcp://127.0.0.1:0",
                                 "--threads", str(args.threads)]
                servers[name] = Server(name, cmd, os.path.join(logs, f"serve_{tl}_ours.log"), env=env)
                rows[name] = {"policy": name, "task": task, "kind": "ours", "checkpoint": os.path.abspath(ours[task]),
                              "checkpoint_name": os.path.basename(os.path.normpath(ours[task])),
                              "train_minutes": None, "train_samples_per_s": None, **ours_train_record(ours[task])}
            else:
                log(f"{task}: no --ours checkpoint; peers only")
            addrs = {}
            for n, srv in list(servers.items()):
                try:
                    addrs[n] = srv.wait()
                    from robot_bridge.client import PolicyClient

                    with PolicyClient(addrs[n], timeout_ms=30_000) as c:
                        meta = c.hello()
                    rows[n].update(params=rows[n].get("params") or (meta.get("policy") or {}).get("parameters"),
                                   chunk_size=meta.get("chunk_size"), n_action_steps=meta.get("n_action_steps"),
                                   nfe=(meta.get("policy") or {}).get("nfe"), threads=args.threads)
                    log(f"{n} on {addrs[n]} (chunk {meta.get('chunk_size')}, n_action_steps {meta.get('n_action_steps')})")
                except Exception as e:  # noqa: BLE001
                    error(f"{task}/{n}: serve", e)
                    servers.pop(n).stop()
                    rows.pop(n, None)

            # 4. closed-loop evaluation, one policy at a time
            for n, addr in addrs.items():
                if n not in servers:
                    continue
                edir = os.path.join(runs, "eval", f"{tl}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', n)}")
                try:
                    cmd = vla_cmd + ["eval", "--server", addr, "--task", task, "--episodes", str(args.episodes),
                                     "--mode", "sync", "--out", edir, "--videos", "0",
                                     "--image-size", str(args.image_size)]
                    if args.seed_base is not None:
                        cmd += ["--seed-base", str(args.seed_base)]
                    log(f"{task}/{n}: evaluating {args.episodes} episodes")
                    sfile = os.path.join(edir, f"summary_{task}.json")
                    if os.path.exists(sfile):
                        os.remove(sfile)
                    rc = run_streamed(cmd, f"eval {n}", os.path.join(logs, f"eval_{tl}_{os.path.basename(edir)}.log"),
                                      env=env)
                    if rc != 0 or not os.path.isfile(sfile):
                        raise RuntimeError(f"vla eval exited {rc}")
                    s = json.load(open(sfile))
                    rows[n].update(success=s["success_rate"], episodes=s["episodes"], mean_length=s["mean_length"],
                                   replan_every=s.get("replan_every"), eval_chunk_ms_p50=s.get("chunk_ms_p50"),
                                   eval_seconds=s.get("seconds"))
                    log(f"{task}/{n}: success {s['success_rate']:.0%} over {s['episodes']} episodes")
                except Exception as e:  # noqa: BLE001
                    error(f"{task}/{n}: eval", e)
                result["rows"] = [r for r in result["rows"] if r["task"] != task] + list(rows.values())
                save()

            # 5. latency over the same observations, interleaved
            live = {n: a for n, a in addrs.items() if n in servers and servers[n].proc.poll() is None}
            if live and args.latency_obs > 0:
                try:
                    from latency import sample_observations

                    src = data.get(task) if os.path.isfile(data.get(task, "")) else ds
                    try:
                        obs = sample_observations(src, n=args.latency_obs, seed=0, task=task)
                    except ValueError:  # the file names its task otherwise (a LeRobot export: the instruction)
                        obs = sample_observations(src, n=args.latency_obs, seed=0)
                    log(f"{task}: chunk latency of {list(live)} over {len(obs)} observations of {src}, interleaved")
                    lat = measure_latency(live, obs)
                    for n, d in lat.items():
                        rows[n].update(d, latency_source=src)
                except Exception as e:  # noqa: BLE001
                    error(f"{task}: latency", e)
            result["rows"] = [r for r in result["rows"] if r["task"] != task] + list(rows.values())
            save()
        finally:
            for srv in servers.values():
                srv.stop()
    result["seconds"] = round(time.time() - t_start, 1)
    save()
    cols = ("policy", "task", "success", "episodes", "chunk_ms_p50", "chunk_ms_p99", "params", "train_minutes",
            "train_samples_per_s")
    print("\t".join(cols))
    for r in result["rows"]:
        print("\t".join("-" if r.get(c) is None else (f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]))
                        for c in cols))
    log(f"wrote {out} and {png}; ours/best peer success (min over tasks): {result['ours_over_best_peer_success_min']}, "
        f"ours/ACT latency: {result['ours_over_act_latency']}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
