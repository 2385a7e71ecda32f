"""LIBERO episode records -> one table: per-task and suite success, merged across workers, shards and machines.

Each worker appends one JSON line per finished (task, trial) to `episodes.<tag>.jsonl`; `merge` reads every such file
under the given folders, keeps one record per (task, trial) and refuses records that were run under different
settings (suite, conventions, step limit, replanning, image size): those would not be one table.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

# policy_weights: the served checkpoint's weights_id (a resumed folder must keep its policy)
SETTINGS = ("suite", "conventions", "max_steps", "replan_every", "image_size", "seed", "wait_steps", "policy_weights")


def read_episodes(dirs) -> list[dict]:
    """Every episode record under `dirs` (one per (task_id, trial); a repeated trial keeps its first record)."""
    seen, out = set(), []
    for d in [dirs] if isinstance(dirs, str) else dirs:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{d}: no such folder of LIBERO episodes")
        for path in sorted(glob.glob(os.path.join(d, "episodes*.jsonl"))):
            with open(path) as f:
                for n, line in enumerate(f, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill: that trial is simply not done
                        continue
                    key = (int(r["task_id"]), int(r["trial"]))
                    if key not in seen:
                        seen.add(key)
                        out.append(r)
    return out


def settings_of(records: list[dict]) -> dict:
    """The settings all records share; ValueError naming the first field where two records differ."""
    if not records:
        return {}
    first = {k: records[0].get(k) for k in SETTINGS}
    for r in records[1:]:
        for k in SETTINGS:
            if r.get(k) != first[k]:
                raise ValueError(f"episodes disagree on {k}: {first[k]!r} (task {records[0]['task_id']} trial "
                                 f"{records[0]['trial']}) vs {r.get(k)!r} (task {r['task_id']} trial {r['trial']}); "
                                 f"keep runs with different settings in different folders")
    return first


def summarize(records: list[dict], extra: dict | None = None) -> dict:
    """The suite table: per task {success, trials, successes, instruction}, the average over tasks, timings."""
    settings = settings_of(records)
    per_task: dict = {}
    for r in sorted(records, key=lambda r: (r["task_id"], r["trial"])):
        t = per_task.setdefault(r["task"], {"task_id": r["task_id"], "instruction": r.get("instruction"),
                                            "trials": 0, "successes": 0})
        t["trials"] += 1
        t["successes"] += int(bool(r["success"]))
    for t in per_task.values():
        t["success"] = round(t["successes"] / t["trials"], 4)
    trials = sorted({t["trials"] for t in per_task.values()})
    step_ms = [r["env_step_ms"] for r in records if r.get("env_step_ms") is not None]
    infer_ms = [r["infer_ms"] for r in records if r.get("infer_ms") is not None]
    out = {
        **settings,
        "trials_per_task": trials[0] if len(trials) == 1 else trials,
        "episodes": len(records),
        "per_task": per_task,
        "average": round(float(np.mean([t["success"] for t in per_task.values()])), 4) if per_task else None,
        "env_step_ms": round(float(np.median(step_ms)), 1) if step_ms else None,
        "infer_ms": round(float(np.median(infer_ms)), 1) if infer_ms else None,
    }
    if extra:
        out.update(extra)
    return out


def bar_chart(summary: dict, path: str) -> None:
    """Per-task success bars (PNG), the suite average as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(summary["per_task"].items(), key=lambda kv: kv[1]["task_id"])
    names = [f"{v['task_id']}: {k.replace('_', ' ')[:40]}" for k, v in tasks]
    vals = [100 * v["success"] for _, v in tasks]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(tasks) + 1.5))
    ax.barh(range(len(tasks)), vals, color="#4c72b0")
    ax.set_yticks(range(len(tasks)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.axvline(100 * summary["average"], color="#c44e52", ls="--", label=f"average {100 * summary['average']:.1f}%")
    ax.set_xlabel("success (%)")
    ax.set_title(f"{summary['suite']} ({summary['conventions']} conventions, {summary['trials_per_task']} trials/task)",
                 fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def format_table(summary: dict) -> str:
    lines = [f"{summary['suite']}  conventions {summary['conventions']}  max_steps {summary['max_steps']}  "
             f"replan {summary['replan_every']}  image {summary['image_size']} px"]
    for name, t in sorted(summary["per_task"].items(), key=lambda kv: kv[1]["task_id"]):
        lines.append(f"  {t['task_id']:>2}  {100 * t['success']:5.1f}%  ({t['successes']}/{t['trials']})  {name}")
    lines.append(f"  average {100 * summary['average']:.1f}% over {len(summary['per_task'])} tasks, "
                 f"{summary['episodes']} episodes; env step {summary['env_step_ms']} ms, "
                 f"chunk {summary['infer_ms']} ms")
    return "\n".join(lines)
