"""Merge `sim.libero.collect` runs (e.g. tasks split over parallel processes) into one demo directory.

    python -m sim.libero.merge_demos --out data/libero_object_expert \
        data/libero_object_expert data/libero_object_expert_b data/libero_object_expert_c

Takes every task a source finished (the first source listing it wins; later ones are recorded as duplicates),
links (or copies) its `<task_name>_demo.hdf5` into --out and writes --out/expert.json in collect's layout, each task
entry naming its source run and that run's command. Sources must share the settings that make demos comparable
(suite, image size, step budget, wait steps, seed rule, expert config); a mismatch is refused, naming the field.
h5py-free: works in either venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys

from sim.libero.collect import write_json

SAME = ("suite", "image_size", "seed", "seed_rule", "max_steps", "wait_steps", "expert", "keep_failed")


def _task_complete(entry: dict) -> bool:
    if "complete" in entry:
        return bool(entry["complete"])
    return entry.get("success_rate") is not None  # runs before the "complete" flag set it only on completion


def read_run(path: str) -> dict:
    json_path = os.path.join(path, "expert.json")
    if not os.path.exists(json_path):
        raise FileNotFoundError(f"source {path}: no expert.json (not a sim.libero.collect output directory)")
    with open(json_path) as f:
        return json.load(f)


def merge_reports(sources: list[tuple[str, dict]], command: str) -> dict:
    """sources: (directory, its expert.json). Returns the merged report (tasks ordered by task index)."""
    if not sources:
        raise ValueError("sources: expected at least one collect output directory")
    base_dir, base = sources[0]
    for src, rep in sources[1:]:
        for key in SAME:
            if rep.get(key) != base.get(key):
                raise ValueError(f"{key}: {src} ran with {rep.get(key)!r}, {base_dir} with {base.get(key)!r}; "
                                 f"their demos are not one data set")
    tasks, duplicates = {}, []
    for src, rep in sources:
        for name, entry in rep["tasks"].items():
            if not _task_complete(entry):
                continue
            if name in tasks:
                duplicates.append({"task": name, "source": src, "kept": tasks[name]["source"]})
                continue
            tasks[name] = {**entry, "source": os.path.abspath(src), "command": rep["command"]}
    ordered = dict(sorted(tasks.items(), key=lambda kv: kv[1]["index"]))
    attempts = sum(e["attempts"] for e in ordered.values())
    successes = sum(e["successes"] for e in ordered.values())
    merged = {key: base.get(key) for key in ("suite", "image_size", "seed", "seed_rule", "mode", "attempts_per_task",
                                             "demos_wanted", "max_steps", "wait_steps", "expert", "keep_failed")}
    merged.update(
        command=command,
        merged_from=[{"dir": os.path.abspath(src), "command": rep["command"], "finished": rep.get("finished")}
                     for src, rep in sources],
        duplicates=duplicates,
        tasks=ordered,
        finished=True,
        wall_s=round(sum(e.get("wall_s", 0.0) for e in ordered.values()), 1),
        overall={"attempts": attempts, "successes": successes,
                 "success_rate": successes / attempts if attempts else None,
                 "min_task_success_rate": min((e["success_rate"] for e in ordered.values()), default=None)},
    )
    return merged


def place_file(src: str, dst: str) -> str:
    """Hard-link src at dst (copy across file systems); an existing identical file is kept, a different one refused."""
    if os.path.exists(dst):
        if os.path.samefile(src, dst):
            return "present"
        raise FileExistsError(f"{dst} exists and is not {src}; remove it or merge into another --out")
    try:
        os.link(src, dst)
        return "linked"
    except OSError:
        tmp = dst + ".tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return "copied"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sources", nargs="+", help="sim.libero.collect output directories, in order of preference")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    command = "python -m sim.libero.merge_demos " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    sources = [(src, read_run(src)) for src in args.sources]
    merged = merge_reports(sources, command)
    os.makedirs(args.out, exist_ok=True)
    for name, entry in merged["tasks"].items():
        src_file = os.path.join(entry["source"], entry["file"])
        if not os.path.exists(src_file):
            raise FileNotFoundError(f"task {name}: {src_file} is missing")
        how = place_file(src_file, os.path.join(args.out, entry["file"]))
        print(f"{entry['index']:2d} {name}: {entry['successes']}/{entry['attempts']}, {entry['kept_demos']} demos "
              f"({how} from {entry['source']})")
    write_json(os.path.join(args.out, "expert.json"), merged)
    o = merged["overall"]
    print(f"wrote {args.out}/expert.json: {len(merged['tasks'])} tasks, {o['successes']}/{o['attempts']} successes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
