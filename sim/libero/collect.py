"""Collect scripted-expert demos for LIBERO pick-and-place tasks in LIBERO's native HDF5 layout.

Runs in the LIBERO venv:

    cd /work/main && MUJOCO_GL=egl LIBERO_CONFIG_PATH=.venv-libero/libero-config .venv-libero/bin/python \
        -m sim.libero.collect --suite libero_object --tasks all --demos 20 --out data/libero_object_expert \
        --image-size 128 --seed 100000

Every episode starts from a FRESH placement (`env.seed(s); env.reset()`, s from `episode_seed`, never the
suite's init states, which evaluation uses), then the evaluation's wait steps (not recorded) let the objects settle.
Writes `<task_name>_demo.hdf5` per task (successful demos only unless --keep-failed) and `expert.json`: the expert's
success per task (attempts, successes, success rate, mean steps) with the command, rewritten after every task.

`--demos N` collects until N successes (at most --max-attempts tries); `--attempts N` makes exactly N tries, which is
how the expert's success rate is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from dataclasses import asdict

import numpy as np

from sim.libero.conventions import NOOP_ACTION, OPENPI, check_suite, quat_to_axis_angle
from sim.libero.expert import ExpertConfig, LiberoPickPlaceExpert, task_objects
from sim.libero.native import DemoBuffer, NativeDemoWriter, task_file_name

SEED_STRIDE = 10_000  # seeds of task i: seed + i * SEED_STRIDE + attempt
CAMERA_NAMES = ["robot0_eye_in_hand", "agentview"]


def episode_seed(base: int, task_index: int, attempt: int) -> int:
    if not 0 <= attempt < SEED_STRIDE:
        raise ValueError(f"attempt: expected 0 <= attempt < {SEED_STRIDE}, got {attempt}")
    return base + task_index * SEED_STRIDE + attempt


def parse_tasks(text: str, n_tasks: int) -> list[int]:
    if text == "all":
        return list(range(n_tasks))
    try:
        ids = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"tasks: expected 'all' or comma-separated task indices (e.g. 0,3), got {text!r}") from None
    bad = [i for i in ids if not 0 <= i < n_tasks]
    if not ids or bad:
        raise ValueError(f"tasks: expected indices in [0, {n_tasks}), got {text!r}")
    return ids


def make_env(bddl_file: str, image_size: int):
    """LIBERO's OffScreenRenderEnv with both cameras at image_size; returns (env, env_kwargs as recorded)."""
    from libero.libero.envs import OffScreenRenderEnv

    env_kwargs = {"bddl_file_name": bddl_file, "camera_heights": image_size, "camera_widths": image_size,
                  "camera_names": CAMERA_NAMES}
    env = OffScreenRenderEnv(**env_kwargs)
    return env, env_kwargs


def env_args_for(env, env_kwargs: dict) -> tuple[str, dict, dict]:
    """(env_name, problem_info, env_args) as LIBERO's create_dataset.py records them."""
    import robosuite

    inner = env.env
    env_name = type(inner).__name__
    problem_info = {"problem_name": env.problem_name, "domain_name": env.domain_name,
                    "language_instruction": env.language_instruction}
    kwargs = {
        "robots": ["Panda"],
        "controller_configs": robosuite.load_controller_config(default_controller="OSC_POSE"),
        "bddl_file_name": env_kwargs["bddl_file_name"],
        "has_renderer": False,
        "has_offscreen_renderer": True,
        "ignore_done": False,
        "use_camera_obs": True,
        "camera_depths": False,
        "camera_names": env_kwargs["camera_names"],
        "reward_shaping": False,
        "control_freq": 20,
        "camera_heights": env_kwargs["camera_heights"],
        "camera_widths": env_kwargs["camera_widths"],
        "camera_segmentations": None,
    }
    env_args = {"type": 1, "env_name": env_name, "problem_name": env.problem_name,
                "bddl_file": env_kwargs["bddl_file_name"], "env_kwargs": kwargs}
    return env_name, problem_info, env_args


def run_episode(env, expert: LiberoPickPlaceExpert, seed: int, max_steps: int, wait_steps: int,
                record: bool = True, check_stop=None) -> tuple[bool, int, DemoBuffer | None]:
    """One episode from a fresh placement: reset with `seed`, `wait_steps` no-ops, then up to `max_steps` expert
    steps, stopping at the first success. Returns (success, steps, the recorded demo or None). `check_stop()` runs
    before every step and may raise to abandon the episode."""
    env.seed(seed)
    obs = env.reset()
    for _ in range(wait_steps):
        obs, _, _, _ = env.step(list(NOOP_ACTION))
    expert.reset(seed=seed)
    demo = DemoBuffer() if record else None
    if demo is not None:
        demo.model_file = env.sim.model.get_xml()
    success = False
    for t in range(max_steps):
        if check_stop is not None:
            check_stop()
        state = env.sim.get_state().flatten()
        action = expert.act(env, obs)
        next_obs, _, _, _ = env.step(action.tolist())
        success = bool(env.check_success())
        if demo is not None:
            demo.add(obs, quat_to_axis_angle(obs["robot0_eef_quat"]), state, expert.clean_action,
                     reward=float(success), done=success)
        obs = next_obs
        if success:
            return True, t + 1, demo
    return False, max_steps, demo


class _Terminated(Exception):
    pass


class StopFlag:
    """SIGTERM/SIGINT set a flag that the episode loop checks between steps, so a signal never lands inside LIBERO's
    env construction or an HDF5 write; the run then stops at the next step and closes its files."""

    def __init__(self):
        self.signum: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise _Terminated(f"signal {self.signum}")


def write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="libero_object")
    ap.add_argument("--tasks", default="all", help="'all' or comma-separated task indices, e.g. 0,3")
    ap.add_argument("--demos", type=int, default=None, help="successful demos wanted per task")
    ap.add_argument("--attempts", type=int, default=None, help="exactly this many episodes per task")
    ap.add_argument("--max-attempts", type=int, default=None, help="with --demos: give up after this many (2N+2)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=100_000, help=f"episode seeds: seed + task * {SEED_STRIDE} + k")
    ap.add_argument("--max-steps", type=int, default=None, help="expert steps per episode (default: the suite's "
                                                                 "evaluation budget)")
    ap.add_argument("--wait-steps", type=int, default=OPENPI.wait_steps)
    ap.add_argument("--noise", type=float, default=ExpertConfig.noise, help="std of the executed action noise")
    ap.add_argument("--keep-failed", action="store_true", help="also write failed episodes")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    command = "python -m sim.libero.collect " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    check_suite(args.suite)
    if (args.demos is None) == (args.attempts is None):
        ap.error("give exactly one of --demos N (successes wanted) or --attempts N (episodes per task)")
    for name in ("demos", "attempts", "max_attempts", "image_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')}: expected >= 1, got {v}")
    if args.seed == OPENPI.seed or args.seed < 0:
        ap.error(f"--seed: expected a non-negative seed other than the evaluation's ({OPENPI.seed})")
    max_steps = args.max_steps or OPENPI.steps_for(args.suite)
    if args.attempts is not None:
        budget = args.attempts
    else:
        budget = args.max_attempts or 2 * args.demos + 2
    if budget > SEED_STRIDE:
        ap.error(f"attempts: at most {SEED_STRIDE} per task, got {budget}")

    from libero.libero import benchmark, get_libero_path
    from tqdm import tqdm

    suite = benchmark.get_benchmark_dict()[args.suite]()
    task_ids = parse_tasks(args.tasks, suite.n_tasks)
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "expert.json")
    config = ExpertConfig(noise=args.noise)
    report = {
        "command": command,
        "suite": args.suite,
        "image_size": args.image_size,
        "seed": args.seed,
        "seed_rule": f"seed + task_index * {SEED_STRIDE} + attempt; fresh env.reset() placements, not init states",
        "mode": "attempts" if args.attempts is not None else "demos",
        "attempts_per_task": args.attempts,
        "demos_wanted": args.demos,
        "max_steps": max_steps,
        "wait_steps": args.wait_steps,
        "expert": asdict(config),
        "keep_failed": args.keep_failed,
        "tasks": {},
        "finished": False,
    }
    stop = StopFlag()
    stop.install()
    t_start = time.time()
    interrupted = None
    bar = tqdm(total=len(task_ids) * (args.attempts or args.demos), disable=args.no_progress, unit="ep",
               dynamic_ncols=True)
    try:
        for ti in task_ids:
            stop.check()
            task = suite.get_task(ti)
            bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
            env, env_kwargs = make_env(bddl, args.image_size)
            entry = {"index": ti, "language": task.language, "file": task_file_name(task.name),
                     "attempts": 0, "successes": 0, "success_rate": None, "mean_steps": None,
                     "kept_demos": 0, "failed_seeds": [], "wall_s": 0.0, "complete": False}
            report["tasks"][task.name] = entry
            t_task = time.time()
            steps_ok: list[int] = []
            try:
                target, container = task_objects(env)
                entry.update(target=target, container=container)
                env_name, problem_info, env_args = env_args_for(env, env_kwargs)
                writer = NativeDemoWriter(
                    os.path.join(args.out, entry["file"]), env_name=env_name, problem_info=problem_info,
                    env_args=env_args, bddl_file_name=bddl, bddl_file_content=open(bddl).read(),
                    extra_attrs={"collection": {"source": "scripted expert (sim.libero.expert)",
                                                "actions": "expert's noise-free labels; the env executed them "
                                                           "plus Gaussian noise (see expert.noise)",
                                                "expert": asdict(config), "command": command}})
                with writer:
                    expert = LiberoPickPlaceExpert(target, container, config)
                    for k in range(budget):
                        if args.demos is not None and entry["successes"] >= args.demos:
                            break
                        seed = episode_seed(args.seed, ti, k)
                        ok, steps, demo = run_episode(env, expert, seed, max_steps, args.wait_steps,
                                                      check_stop=stop.check)
                        entry["attempts"] += 1
                        if ok:
                            entry["successes"] += 1
                            steps_ok.append(steps)
                        else:
                            entry["failed_seeds"].append(seed)
                        if ok or args.keep_failed:
                            writer.write_demo(demo)
                            entry["kept_demos"] += 1
                        if ok or args.attempts is not None:
                            bar.update(1)
                        bar.set_postfix_str(f"task {ti} {entry['successes']}/{entry['attempts']} ok")
                entry["complete"] = True
            finally:
                entry["success_rate"] = entry["successes"] / entry["attempts"] if entry["attempts"] else None
                entry["mean_steps"] = float(np.mean(steps_ok)) if steps_ok else None
                entry["wall_s"] = round(time.time() - t_task, 1)
                report["wall_s"] = round(time.time() - t_start, 1)
                write_json(json_path, report)
                env.close()
    except (KeyboardInterrupt, _Terminated) as exc:
        interrupted = repr(exc)
    except BaseException as exc:  # an error: still record what was finished, then fail
        interrupted = repr(exc)
        raise
    finally:
        bar.close()
        _finish(report, json_path, interrupted, t_start)
    for name, e in report["tasks"].items():
        print(f"{e['index']:2d} {name}: {e['successes']}/{e['attempts']} success, kept {e['kept_demos']}, "
              f"mean steps {e['mean_steps']}")
    print(f"wrote {args.out} ({report['wall_s']} s){' INTERRUPTED' if interrupted else ''}")
    return 0 if interrupted is None else 130


def _finish(report: dict, json_path: str, interrupted: str | None, t_start: float) -> None:
    attempts = sum(e["attempts"] for e in report["tasks"].values())
    successes = sum(e["successes"] for e in report["tasks"].values())
    report.update(finished=interrupted is None, interrupted=interrupted, wall_s=round(time.time() - t_start, 1),
                  overall={"attempts": attempts, "successes": successes,
                           "success_rate": successes / attempts if attempts else None,
                           "min_task_success_rate": min((e["success_rate"] for e in report["tasks"].values()
                                                         if e["success_rate"] is not None), default=None)})
    write_json(json_path, report)


if __name__ == "__main__":
    sys.exit(main())
