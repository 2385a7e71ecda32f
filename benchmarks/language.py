"""Language beyond the training templates: success with held-out phrasings over success with the template, same
seeds, for the word tokenizer and the pretrained instruction encoder (model.text_encoder: minilm).

    python benchmarks/language.py --stages train,eval --episodes 50 --workers 2      # ~1 h 20 min training + eval
    python benchmarks/language.py --stages eval --episodes 2 --max-steps 20          # smoke run of the evaluation
    python benchmarks/language.py --stages train,eval --steps 3600 --only minilm     # half the release's steps
    python benchmarks/language.py --stages eval --only minilm \
        --minilm-policy runs/language/minilm/checkpoints/step_004800                  # a checkpoint, words kept

Policies: `words` is the shipped five-task release (vla/pretrained/multitask_tiny, word vocabulary); `minilm` is the
same recipe (configs/train/multitask_tiny_release.yaml, same data, steps and seeds) with the MiniLM encoder's
per-token states in place of the word embeddings (`train` stage; runs/language/minilm, reused when finished).
Each policy runs PickColor and StackColor episodes with the env's own template instruction, then the same seeds with
the instruction rephrased: episode i uses held-out phrasing i mod n (HELD_OUT below, written before any training and
never used in it: other verbs, other nouns, added words, reordered clauses), filled with the episode's colours.
Writes benchmarks/results/language.json: per policy and task the two success rates and their ratio, the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from common import ROOT, VLA, add_stages, command, parse_stages, policy_done, train_record, train_run, write_json

STAGES = ["train", "eval"]

TASKS = ("PickColor", "StackColor")
WORDS_POLICY = "vla/pretrained/multitask_tiny"
MINILM_RUN = "runs/language/minilm"
MINILM_MAX_TEXT = 16  # WordPiece tokens with [CLS] and [SEP]: the longest phrasing below needs 13
# the templates the envs draw (sim/color_envs.py); a held-out phrasing is filled with the colours parsed from them
TEMPLATE = {"PickColor": re.compile(r"^pick up the (\w+) cube$"),
            "StackColor": re.compile(r"^put the (\w+) cube on the (\w+) cube$")}
HELD_OUT = {
    "PickColor": [
        "grab the {0} cube",
        "lift the {0} block",
        "please pick up the {0} cube now",
        "the {0} cube: pick it up",
        "take the {0} box off the table",
        "could you raise the {0} cube",
        "find the {0} cube and lift it up",
        "pick the {0} cube up",
    ],
    "StackColor": [
        "place the {0} cube on top of the {1} cube",
        "stack the {0} block onto the {1} block",
        "on the {1} cube, put the {0} cube",
        "please set the {0} cube on the {1} one",
        "move the {0} cube onto the {1} cube",
        "put the {0} block on top of the {1} block",
        "take the {0} cube and place it on the {1} cube",
        "the {0} cube goes on the {1} cube",
    ],
}


def rephrase(task: str, instruction: str, episode: int) -> str:
    m = TEMPLATE[task].match(instruction)
    if m is None:
        raise ValueError(f"{task}: instruction {instruction!r} does not match the template {TEMPLATE[task].pattern}")
    phrasings = HELD_OUT[task]
    return phrasings[episode % len(phrasings)].format(*m.groups())


class Rephrased:
    """A policy seen through a user who words the instruction their own way (held-out phrasing `episode`)."""

    def __init__(self, policy, task: str):
        self.policy, self.task, self.episode = policy, task, 0
        self.said: list[str] = []

    def reset(self) -> None:
        self.policy.reset()

    def infer(self, obs: dict) -> dict:
        said = rephrase(self.task, obs["instruction"], self.episode)
        if not self.said or self.said[-1] != said:
            self.said.append(said)
        return self.policy.infer({**obs, "instruction": said})


def _cell(args) -> dict:
    """One (policy, task, phrasing) cell over its seeds, in its own process."""
    policy_path, task, seeds, phrasing, max_steps, threads = args
    import torch

    torch.set_num_threads(threads)
    from sim.env import VLAEnv
    from sim.evaluate import rollout
    from vla.policy import Policy

    policy = Policy.from_pretrained(policy_path)
    env = VLAEnv(task, image_size=128, cameras=policy.cfg.cameras)
    rows = []
    for i, s in enumerate(seeds):
        pol = policy
        if phrasing == "held_out":
            pol = Rephrased(policy, task)
            pol.episode = s  # the phrasing follows the seed: the same in every run and worker split
        r = rollout(env, pol, s, policy.n_action_steps, max_steps=max_steps)
        said = pol.said[0] if phrasing == "held_out" and pol.said else r.instruction
        rows.append({"seed": s, "success": bool(r.success), "length": r.length, "template": r.instruction,
                     "said": said})
    env.close()
    return {"policy": policy_path, "task": task, "phrasing": phrasing, "rows": rows}


def evaluate(policies: dict[str, str], episodes: int, workers: int, max_steps: int | None) -> dict:
    from sim.evaluate import EVAL_SEED_BASE

    seeds = [EVAL_SEED_BASE + i for i in range(episodes)]
    jobs = []
    for name, path in policies.items():
        for task in TASKS:
            for phrasing in ("template", "held_out"):
                for w in range(workers):
                    jobs.append((name, (path, task, seeds[w::workers], phrasing, max_steps, 1)))
    t0 = time.time()
    if workers == 1:
        outs = [_cell(j) for _, j in jobs]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            outs = pool.map(_cell, [j for _, j in jobs])
    res: dict = {}
    for (name, _), out in zip(jobs, outs):
        cell = res.setdefault(name, {}).setdefault(out["task"], {}).setdefault(out["phrasing"], [])
        cell.extend(out["rows"])
    for name, per_task in res.items():
        for task, cells in per_task.items():
            for k in cells:
                cells[k].sort(key=lambda r: r["seed"])
            tmpl = sum(r["success"] for r in cells["template"]) / len(cells["template"])
            held = sum(r["success"] for r in cells["held_out"]) / len(cells["held_out"])
            per_task[task] = {"template_success": tmpl, "held_out_success": held,
                              "held_out_over_template": held / tmpl if tmpl else None,
                              "episodes": len(cells["template"]),
                              "episodes_rows": cells}
    res["eval_minutes"] = round((time.time() - t0) / 60, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stages(ap, STAGES)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None, help="cut episodes short (smoke runs only)")
    ap.add_argument("--words-policy", default=WORDS_POLICY)
    ap.add_argument("--minilm-policy", default=None,
                    help="an already trained MiniLM policy or a checkpoint of its run (skips the train stage)")
    ap.add_argument("--steps", type=int, default=None, help="train the MiniLM policy this many steps instead of the "
                    "release's (its own run folder, runs/language/minilm_s<steps>)")
    ap.add_argument("--only", default=None, help="evaluate only these policies (words, minilm); the others keep their "
                    "results from the existing --out file, with the command that wrote them")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/language.json"))
    args = ap.parse_args()
    stages = parse_stages(args.stages, STAGES)
    log: list[str] = []
    run_dir = MINILM_RUN if args.steps is None else f"{MINILM_RUN}_s{args.steps}"
    minilm = args.minilm_policy or f"{run_dir}/policy"
    record: dict = {"held_out": HELD_OUT, "templates": {k: v.pattern for k, v in TEMPLATE.items()}}
    if "train" in stages and not args.minilm_policy:
        steps = [] if args.steps is None else ["--set", f"steps={args.steps}"]
        train_run([VLA, "train", "--config", "multitask_tiny_release", "--out", run_dir, "--no-progress",
                   "--set", "model_overrides.text_encoder=minilm",
                   "--set", f"model_overrides.max_text_len={MINILM_MAX_TEXT}", *steps], run_dir, log)
    if not args.minilm_policy and policy_done(run_dir):
        record["minilm_train"] = train_record(run_dir)
    m = re.search(r"(.*)/checkpoints/step_(\d+)/?$", minilm)
    if m:  # a checkpoint of an unfinished run: say how far it had trained
        with open(os.path.join(ROOT, m.group(1), "train_config.json")) as f:
            record["minilm_checkpoint"] = {"path": minilm, "step": int(m.group(2)), "of_steps": json.load(f)["steps"]}
    if "eval" in stages:
        policies = {"words": args.words_policy}
        if os.path.isfile(os.path.join(ROOT, minilm, "config.json")) or policy_done(run_dir):
            policies["minilm"] = minilm
        else:
            print(f"no MiniLM policy at {minilm}: evaluating the word-tokenizer policy only", flush=True)
        kept = {}
        if args.only:
            only = set(args.only.split(","))
            prev = {}
            if os.path.isfile(args.out):
                with open(args.out) as f:
                    prev = json.load(f)
            kept = {n: p for n, p in policies.items() if n not in only and n in prev.get("results", {})
                    and prev.get("policies", {}).get(n) == p}
            for n in kept:
                if any(v["episodes"] != args.episodes for v in prev["results"][n].values() if isinstance(v, dict)):
                    sys.exit(f"--only: the kept {n} results ran another number of episodes; evaluate it again")
            policies = {n: p for n, p in policies.items() if n in only or n not in kept}
        record["results"] = evaluate(policies, args.episodes, args.workers, args.max_steps)
        for n in kept:
            record["results"][n] = prev["results"][n]
        record["policies"] = {**policies, **kept}
        if kept:
            record["kept_from_previous"] = {n: prev.get("command") for n in kept}
        record["replan_every"] = "each policy's n_action_steps"
    record["commands"] = log
    record["command"] = command(__file__)
    if args.max_steps is not None:
        record["smoke"] = f"episodes cut at {args.max_steps} steps: not a measurement"
    write_json(args.out, record)
    print(json.dumps({k: v for k, v in record.get("results", {}).items()}, default=str)[:2000])


if __name__ == "__main__":
    main()
