"""LIBERO env worker: runs (task, trial) episodes of one suite against a policy server, in LIBERO's venv.

    .venv-libero/bin/python -m sim.libero.worker --suite libero_object --server tcp://127.0.0.1:5555 \
        --out eval/libero_object --shard 0/1 [--conventions openpi] [--trials 50] [--tasks 0,3]

Imports only LIBERO, numpy, imageio and `robot_bridge` (torch-free): the policy lives behind the server. Each finished
episode is one line appended (and flushed) to `<out>/episodes.<tag>.jsonl`; a (task, trial) already in any
`episodes*.jsonl` of `<out>` is skipped, so rerunning the same command resumes. An unreachable or dead policy server
ends the worker with exit 3 and a line saying what to do; the trial in flight is not recorded (never a silent 0).

The episode follows openpi's `examples/libero/main.py` (or LeRobot's conventions, `--conventions lerobot`):
env seeded once per task, trial i = `reset()` then `set_init_state(init_states[i])`, `wait_steps` no-op steps, then
up to max_steps policy steps, a new chunk every `replan_every` steps, success = the env's `done`. The episode runs in
robot_bridge's control loop (sync mode), with the env as its robot (LiberoRobot): the runner of every evaluation.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

from sim.libero import conventions as C

EXIT_SERVER = 3  # the policy server did not answer / failed
EXIT_MISMATCH = 4  # the policy's declared inputs/outputs do not fit LIBERO's


class PolicyMismatch(ValueError):
    pass


# ----------------------------------------------------------------- the policy's handshake -> LIBERO's observations
def camera_mapping(policy_cameras, overrides: dict | None = None) -> dict:
    """policy camera name -> LIBERO observation key, from the names (aliases in conventions.CAMERA_KEYS) or
    `overrides` {policy name: LIBERO key}. Raises PolicyMismatch naming both sides when a camera has no match."""
    overrides = dict(overrides or {})
    out, unknown = {}, []
    for cam in policy_cameras:
        if cam in overrides:
            key = overrides.pop(cam)
            if key not in C.CAMERA_KEYS:
                raise PolicyMismatch(f"camera map: {cam}={key}: LIBERO has cameras {sorted(C.CAMERA_KEYS)}")
            out[cam] = key
            continue
        low = cam.lower()
        hits = [k for k, names in C.CAMERA_KEYS.items() if low == k or low in names]
        if len(hits) == 1:
            out[cam] = hits[0]
        else:
            unknown.append(cam)
    if overrides:
        raise PolicyMismatch(f"camera map: the policy has no camera(s) {sorted(overrides)}; "
                             f"it has {list(policy_cameras)}")
    if unknown:
        known = {k: list(v[:3]) for k, v in C.CAMERA_KEYS.items()}
        raise PolicyMismatch(
            f"cameras: the policy's {unknown} match none of LIBERO's cameras {known}; "
            f"map them with --camera-map {unknown[0]}=agentview_image (or robot0_eye_in_hand_image)")
    return out


def parse_camera_map(text: str) -> dict:
    """--camera-map "front=agentview_image,hand=robot0_eye_in_hand_image" -> {policy camera: LIBERO key}."""
    out = {}
    for kv in filter(None, text.split(",")):
        if "=" not in kv:
            raise PolicyMismatch(f"camera map: expected POLICY_CAMERA=LIBERO_KEY, got {kv!r}")
        cam, key = kv.split("=", 1)
        out[cam] = key
    return out


def check_policy(meta: dict) -> None:
    """The policy must take LIBERO's 8-dim state and output 7-dim eef-delta actions; no silent pad or crop."""
    state_dim = meta.get("state_dim")
    if state_dim != C.STATE_DIM:
        raise PolicyMismatch(f"state: the policy takes state_dim {state_dim}; LIBERO gives {C.STATE_DIM} "
                             f"({', '.join(C.STATE_NAMES)})")
    action_dim = meta.get("action_dim")
    if action_dim != C.ACTION_DIM:
        raise PolicyMismatch(f"actions: the policy outputs action_dim {action_dim}; LIBERO takes {C.ACTION_DIM} "
                             f"(eef delta pos 3 + rot 3 + gripper)")
    kind = (meta.get("action_space") or {}).get("kind")
    if kind not in (None, "eef_delta"):
        raise PolicyMismatch(f"actions: the policy's action space is {kind!r}; LIBERO runs 'eef_delta'")


def policy_obs(raw: dict, cams: dict, instruction: str, conv: C.Conventions) -> dict:
    """LIBERO's raw observation -> our wire observation (images upright: rotated 180, state 8, instruction)."""
    images = {}
    for cam, key in cams.items():
        im = raw[key]
        images[cam] = np.ascontiguousarray(im[::-1, ::-1] if conv.rotate_180 else im)
    state = np.asarray(C.libero_state(raw["robot0_eef_pos"], raw["robot0_eef_quat"], raw["robot0_gripper_qpos"]),
                       dtype=np.float32)
    return {"images": images, "state": state, "instruction": instruction}


# ----------------------------------------------------------------- episodes
def done_trials(out_dir: str) -> set:
    done = set()
    for path in glob.glob(os.path.join(out_dir, "episodes*.jsonl")):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that trial runs again
                    continue
                done.add((int(r["task_id"]), int(r["trial"])))
    return done


def make_env(suite_obj, task_id: int, conv: C.Conventions, image_size: int):
    from libero.libero import get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    task = suite_obj.get_task(task_id)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=image_size, camera_widths=image_size)
    # LIBERO's own rendering (shadows and reflections on), as its datasets and openpi's evaluation have it: every
    # env.reset() builds a new sim (hard reset), so render flags set on the context would not survive a trial anyway
    env.seed(conv.seed)
    return env, task


def weights_of(meta: dict) -> str | None:
    """The served checkpoint's weights_id from a hello's metadata (our server puts the policy's own metadata under
    "policy"); None for a server that does not say."""
    return meta.get("weights_id") or (meta.get("policy") or {}).get("weights_id")


class LiberoRobot:
    """A LIBERO env as the control loop's robot (robot_bridge.control_loop, the runner every evaluation uses):
    reset(seed=trial) restores init state `trial` and runs the conventions' no-op wait steps; observations go out in
    our wire format (policy_obs); done, and a success, when the env says so. `frames`, if a list, receives every
    policy step's cameras side by side, upright."""

    def __init__(self, env, init_states, cams: dict, instruction: str, conv: C.Conventions,
                 frames: list | None = None):
        self.env, self.init_states, self.cams, self.instruction, self.conv = env, init_states, cams, instruction, conv
        self.frames = frames
        self.raw: dict | None = None
        self.done = self.success = False
        self.step_ms: list[float] = []

    def reset(self, seed: int | None = None) -> dict:
        self.env.reset()
        self.raw = self.env.set_init_state(self.init_states[seed])
        self.done = self.success = False
        self.step_ms = []
        for _ in range(self.conv.wait_steps):
            self._step(C.NOOP_ACTION)
        return self.get_observation()

    def get_observation(self) -> dict:
        return policy_obs(self.raw, self.cams, self.instruction, self.conv)

    def apply(self, action: np.ndarray) -> None:
        action = np.asarray(action)
        if action.shape != (C.ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise PolicyMismatch(f"reply actions: expected finite (H, {C.ACTION_DIM}), got a step of {action.shape}")
        self._step(action.tolist())
        if self.frames is not None:
            self.frames.append(np.concatenate([self.raw[k][::-1, ::-1] for k in C.CAMERA_KEYS], axis=1))

    def _step(self, action: list) -> None:
        t0 = time.perf_counter()
        self.raw, _reward, done, _info = self.env.step(action)
        self.step_ms.append((time.perf_counter() - t0) * 1e3)
        self.done = self.success = self.success or bool(done)


def episode_loop(client, replan_every: int):
    """The control loop LIBERO episodes run in: sync mode, a chunk every replan_every steps. One per worker, so its
    episode ids count up across episodes; run_episode gives it each episode's robot."""
    from robot_bridge.control_loop import ControlLoop, LoopConfig

    return ControlLoop(client, None, LoopConfig(mode="sync", replan_every=replan_every), action_dim=C.ACTION_DIM)


def run_episode(env, client, init_states, trial: int, cams, instruction, conv, max_steps, replan_every,
                frames: list | None = None, loop=None) -> dict:
    """Trial `trial` (init state init_states[trial]) of the loaded task in `loop` (episode_loop(client, replan_every)
    when None): up to max_steps policy steps after the wait steps."""
    loop = loop or episode_loop(client, replan_every)
    robot = loop.robot = LiberoRobot(env, init_states, cams, instruction, conv, frames)
    log = loop.run_episode(seed=trial, max_steps=max_steps)
    return {"success": log.success, "policy_steps": log.length, "env_step_ms": float(np.mean(robot.step_ms)),
            "infer_ms": float(np.median(log.chunk_ms)) if log.chunk_ms else None}


def write_video(frames: list, path: str, fps: int = 20) -> None:
    import imageio

    tmp = path + ".tmp.mp4"
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=6, macro_block_size=1) as w:
        for fr in frames:
            w.append_data(fr)
    os.replace(tmp, path)


def _videos(out: str, task_id: int, success: bool) -> int:
    """MP4s already in `out` for this task and outcome, by any worker (the quota is per folder, not per worker)."""
    tail = "_success.mp4" if success else "_failure.mp4"
    return sum(1 for n in os.listdir(out) if n.startswith(f"task{task_id}_trial") and n.endswith(tail))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.libero.worker", description=__doc__.split("\n")[0])
    ap.add_argument("--suite", required=True)
    ap.add_argument("--server", required=True, help="policy server address, e.g. tcp://127.0.0.1:5555")
    ap.add_argument("--out", required=True)
    ap.add_argument("--conventions", default="openpi", choices=sorted(C.CONVENTIONS))
    ap.add_argument("--trials", type=int, default=None, help="trials per task (default: the conventions' 50)")
    ap.add_argument("--tasks", default="all", help="task ids, e.g. 0,3,7 (default all)")
    ap.add_argument("--shard", default="0/1", help="K/N: this worker runs every N-th (task, trial) from K")
    ap.add_argument("--tag", default=None, help="episodes file tag (default the shard)")
    ap.add_argument("--image-size", type=int, default=None, help="render size (default the conventions' 256)")
    ap.add_argument("--replan-every", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=None, help="override the suite's step limit (tests)")
    ap.add_argument("--camera-map", default="", help="policy camera=LIBERO key, comma separated")
    ap.add_argument("--videos", type=int, default=1, help="MP4s kept per task and outcome (success/failure)")
    ap.add_argument("--timeout-ms", type=float, default=20_000.0, help="per inference request (x2 tries)")
    a = ap.parse_args(argv)

    from robot_bridge.client import PolicyClient

    conv = C.get_conventions(a.conventions)
    settings = C.episode_settings(a.suite, a.conventions, a.image_size, a.replan_every, a.max_steps)
    suite, image_size, max_steps, replan = (settings[k] for k in ("suite", "image_size", "max_steps", "replan_every"))
    shard = C.parse_shard(a.shard)
    trials = a.trials or conv.trials_per_task
    os.makedirs(a.out, exist_ok=True)
    tag = a.tag or f"shard{shard[0]}-of-{shard[1]}"

    client = PolicyClient(a.server, timeout_ms=a.timeout_ms, retries=1)
    loop = episode_loop(client, replan)
    try:
        meta = client.hello(timeout_ms=5000.0)
        check_policy(meta)
        cams = camera_mapping(list(meta["cameras"]), parse_camera_map(a.camera_map))
    except TimeoutError:
        print(f"error: the policy server at {a.server} did not answer the handshake; is `vla serve` running there?",
              file=sys.stderr)
        return EXIT_SERVER
    except PolicyMismatch as e:
        print(f"error: policy does not fit LIBERO: {e}", file=sys.stderr)
        return EXIT_MISMATCH
    settings["policy_weights"] = weights_of(meta)  # recorded in every episode (resuming checks it)
    from sim.libero.runner import check_out_dir

    try:
        check_out_dir(a.out, settings)  # a shard run on its own resumes only its own policy's episodes
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if replan > int(meta["chunk_size"]):
        print(f"error: replan_every {replan} exceeds the policy's chunk_size {meta['chunk_size']}; "
              f"pass --replan-every <= {meta['chunk_size']}", file=sys.stderr)
        return EXIT_MISMATCH

    from libero.libero import benchmark

    suite_obj = benchmark.get_benchmark_dict()[suite]()
    task_ids = list(range(suite_obj.n_tasks)) if a.tasks == "all" else [int(t) for t in a.tasks.split(",")]
    for t in task_ids:
        if not 0 <= t < suite_obj.n_tasks:
            print(f"error: --tasks: task {t} outside 0..{suite_obj.n_tasks - 1} of {suite}", file=sys.stderr)
            return 2
    jobs = C.shard_jobs([(t, i) for t in task_ids for i in range(trials)], shard)
    done = done_trials(a.out)
    todo = [j for j in jobs if j not in done]
    print(json.dumps({"worker": tag, "jobs": len(jobs), "done": len(jobs) - len(todo), "pid": os.getpid()}), flush=True)
    env, env_task = None, None
    path = os.path.join(a.out, f"episodes.{tag}.jsonl")
    with open(path, "a") as log:
        for task_id, trial in todo:
            if env_task != task_id:
                if env is not None:
                    env.close()
                t0 = time.perf_counter()
                env, task = make_env(suite_obj, task_id, conv, image_size)
                init_states = suite_obj.get_task_init_states(task_id)
                env_task = task_id
                make_s = time.perf_counter() - t0
            if trial >= len(init_states):
                print(f"error: {suite} task {task_id} has {len(init_states)} init states; trial {trial} would reuse "
                      f"one: pass --trials <= {len(init_states)}", file=sys.stderr)
                return 2
            print(json.dumps({"start": [task_id, trial]}), flush=True)
            want_video = any(_videos(a.out, task_id, ok) < a.videos for ok in (True, False))
            frames = [] if want_video else None
            t0 = time.perf_counter()
            try:
                res = run_episode(env, client, init_states, trial, cams, task.language, conv, max_steps, replan,
                                  frames=frames, loop=loop)
            except TimeoutError:
                print(f"error: the policy server at {a.server} stopped answering during {suite} task {task_id} trial "
                      f"{trial} (not recorded); restart `vla serve` and rerun the same command to resume",
                      file=sys.stderr)
                return EXIT_SERVER
            except Exception as e:  # a server-side error reply (ProtocolError) or a bad chunk
                print(f"error: {suite} task {task_id} trial {trial} (not recorded): {type(e).__name__}: {e}",
                      file=sys.stderr)
                return EXIT_SERVER if "Protocol" in type(e).__name__ else EXIT_MISMATCH
            rec = {"task_id": task_id, "task": task.name, "instruction": task.language, "trial": trial,
                   "init_state": trial, **settings, "wall_s": round(time.perf_counter() - t0, 2),
                   "env_make_s": round(make_s, 2), **res}
            make_s = 0.0
            if want_video and _videos(a.out, task_id, res["success"]) < a.videos:
                write_video(frames, os.path.join(
                    a.out, f"task{task_id}_trial{trial}_{'success' if res['success'] else 'failure'}.mp4"))
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps({"task_id": task_id, "trial": trial, "success": res["success"],
                              "policy_steps": res["policy_steps"]}), flush=True)
    if env is not None:
        env.close()
    client.close()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip robosuite's EGL context teardown, which only prints ignored exceptions at exit
