"""Task registry: name -> how to build the robosuite env, its horizon and its instruction."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskSpec:
    name: str
    robosuite_env: str  # class name in robosuite's registry
    horizon: int  # control steps (20 Hz) before an episode is truncated
    instruction: str | None  # fixed instruction, or None when the env draws one per episode
    description: str
    n_objects: int  # how many rows of the privileged `object_pos` (3, 3) are meaningful
    object_names: tuple[str, ...]  # what each privileged row holds
    env_kwargs: dict = field(default_factory=dict)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            "Lift", "Lift", 150, "lift the cube", "robosuite Lift: raise the cube 4 cm", 1, ("cube",)
        ),
        TaskSpec(
            "Stack",
            "Stack",
            250,
            "stack the red cube on the green cube",
            "robosuite Stack: the red cube resting on the green one, released",
            2,
            ("red cube", "green cube"),
        ),
        TaskSpec(
            "PickPlaceCan",
            "PickPlaceCan",
            300,
            "put the can in the bin",
            "robosuite PickPlaceCan: the can in its target bin, gripper away",
            2,
            ("can", "target bin"),
        ),
        TaskSpec(
            "PickColor",
            "PickColorEnv",
            150,
            None,
            "three coloured cubes; lift the named one and only it",
            3,
            ("target cube", "other cube", "other cube"),
        ),
        TaskSpec(
            "StackColor",
            "StackColorEnv",
            250,
            None,
            "three coloured cubes; put the first named cube on the second",
            3,
            ("moved cube", "base cube", "other cube"),
        ),
    ]
}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; an unknown name lists the known ones (and the closest)."""
    if name in TASKS:
        return TASKS[name]
    close = difflib.get_close_matches(name, list(TASKS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}.{hint}")
