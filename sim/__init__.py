"""Simulated manipulation tasks (robosuite/MuJoCo), scripted experts, demonstration datasets, evaluation.

Importing `sim` registers every task with gymnasium: `gymnasium.make("sim/PickColor-v0", image_size=128)`.
"""

import gymnasium as _gym

from sim.tasks import TASKS, TaskSpec, get_task

for _name in TASKS:
    _id = f"sim/{_name}-v0"
    if _id not in _gym.registry:
        _gym.register(id=_id, entry_point="sim.env:VLAEnv", kwargs={"task": _name}, disable_env_checker=True)

__all__ = ["TASKS", "TaskSpec", "get_task"]
