"""Collect scripted-expert demonstrations into a robomimic-layout HDF5 file (successful episodes only)."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from vla.formats.hdf5_writer import DemoWriter
from sim.env import DEFAULT_CAMERAS, VLAEnv
from sim.experts import make_expert, run_expert_episode
from sim.tasks import get_task


@dataclass
class CollectResult:
    path: str
    demos: int = 0
    attempts: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    per_task: dict = field(default_factory=dict)

    @property
    def demos_per_min(self) -> float:
        return 60.0 * self.demos / max(self.seconds, 1e-9)


def collect(
    tasks: str | list[str],
    episodes: int,
    out: str,
    image_size: int = 128,
    cameras: tuple[str, ...] = DEFAULT_CAMERAS,
    noise: float = 0.05,
    seed: int = 0,
    append: bool = False,
    overwrite: bool = False,
    max_attempts_factor: float = 3.0,
    progress: bool = True,
) -> CollectResult:
    """Collect `episodes` successful demos per task. Seeds are `seed + attempt` (per task, offset by 100_000).

    Ctrl-C / SIGTERM stops after the demo in progress is discarded; every finished demo stays in the file.
    """
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    specs = [get_task(t) for t in tasks]  # unknown names fail before anything is written
    if episodes < 1:
        raise ValueError(f"episodes: expected >= 1, got {episodes}")
    result = CollectResult(path=out)

    def _on_term(signum, frame):  # SIGTERM -> same path as Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _on_term) if _in_main_thread() else None
    t0 = time.time()
    writer = None
    try:
        for ti, spec in enumerate(specs):
            env = VLAEnv(spec.name, image_size=image_size, cameras=cameras)
            if writer is None:
                env_args = env.env_args() if len(specs) == 1 else {"env_name": "multi", "type": "vla-stack",
                                                                    "tasks": [s.name for s in specs]}
                writer = DemoWriter(out, env_args, append=append, overwrite=overwrite,
                                    vla_env_args=env.vla_env_args() if len(specs) == 1 else None)
            expert = make_expert(spec.name, noise=noise)
            done = 0
            attempts = 0
            bar = tqdm(total=episodes, desc=f"collect {spec.name}", unit="demo", disable=not progress)
            base = seed + 100_000 * ti + (writer.n if append else 0)
            while done < episodes and attempts < int(episodes * max_attempts_factor):
                ep_seed = base + attempts
                attempts += 1
                buf = _Recorder(cameras)
                ok, _ = run_expert_episode(env, expert, seed=ep_seed, record=buf)
                if not ok:
                    continue
                writer.add_demo(
                    task=spec.name,
                    instruction=buf.instruction,
                    seed=ep_seed,
                    images={c: np.stack(v) for c, v in buf.images.items()},
                    state=np.stack(buf.state),
                    actions=np.stack(buf.actions),
                    object_pos=np.stack(buf.object_pos),
                    sim_states=np.stack(buf.sim_states),
                    env_args=env.env_args(),
                )
                done += 1
                result.demos += 1
                result.per_task[spec.name] = {"demos": done, "attempts": attempts}
                bar.update(1)
                bar.set_postfix(success=f"{done}/{attempts}")
            bar.close()
            env.close()
            result.per_task[spec.name] = {"demos": done, "attempts": attempts}
            result.attempts += attempts
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if writer is not None:
            writer.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        result.seconds = time.time() - t0
    return result


class _Recorder:
    def __init__(self, cameras):
        self.images = {c: [] for c in cameras}
        self.state, self.actions, self.object_pos, self.sim_states = [], [], [], []
        self.instruction = ""

    def __call__(self, obs, action, priv):
        for c in self.images:
            self.images[c].append(obs["images"][c])
        self.state.append(obs["state"])
        self.actions.append(action)
        self.object_pos.append(priv["object_pos"])
        self.sim_states.append(priv["sim_state"])
        self.instruction = obs["instruction"]


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
