"""Language-conditioned robosuite environments: three coloured cubes on a table.

``PickColorEnv``  - "pick up the blue cube": success when the named cube is lifted and the others are not.
``StackColorEnv`` - "put the green cube on the red cube": any ordered pair of the three cubes.

Cube colours are drawn from a palette at every reset (the cubes are the same objects; only their
``geom_rgba`` changes), so no model rebuild is needed and ``hard_reset=False`` stays fast.
"""

from __future__ import annotations

import numpy as np
from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
from robosuite.models.arenas import TableArena
from robosuite.models.objects import BoxObject
from robosuite.models.tasks import ManipulationTask
from robosuite.utils.placement_samplers import UniformRandomSampler

from vla.palette import PALETTE

DEFAULT_COLORS = ("red", "green", "blue")

CUBE_HALF = 0.02  # m, every cube is 4 cm wide
LIFT_HEIGHT = 0.04  # m above the table top counts as lifted (robosuite Lift's rule)


class _ColorCubesEnv(ManipulationEnv):
    """Three cubes of distinct colours at random positions; subclasses choose the goal."""

    def __init__(
        self,
        robots="Panda",
        colors: tuple[str, ...] = DEFAULT_COLORS,
        table_full_size=(0.8, 0.8, 0.05),
        table_friction=(1.0, 5e-3, 1e-4),
        placement_range: float = 0.1,
        reward_shaping: bool = False,  # accepted for robosuite API parity; reward is sparse success
        **kwargs,
    ):
        unknown = [c for c in colors if c not in PALETTE]
        if unknown or len(colors) < 3:
            raise ValueError(f"colors: expected >= 3 names from {sorted(PALETTE)}, got {list(colors)}")
        self.colors = tuple(colors)
        self.table_full_size = table_full_size
        self.table_friction = table_friction
        self.table_offset = np.array((0, 0, 0.8))
        self.placement_range = placement_range
        self.placement_initializer = None
        self.cube_colors: list[str] = list(self.colors[:3])
        self.instruction = ""
        super().__init__(robots=robots, **kwargs)

    # ----- model -----
    def _load_model(self):
        super()._load_model()
        xpos = self.robots[0].robot_model.base_xpos_offset["table"](self.table_full_size[0])
        self.robots[0].robot_model.set_base_xpos(xpos)
        arena = TableArena(
            table_full_size=self.table_full_size,
            table_friction=self.table_friction,
            table_offset=self.table_offset,
        )
        arena.set_origin([0, 0, 0])
        self.cubes = [
            BoxObject(name=f"cube{i}", size=[CUBE_HALF] * 3, rgba=PALETTE[self.colors[i]]) for i in range(3)
        ]
        r = self.placement_range
        self.placement_initializer = UniformRandomSampler(
            name="ObjectSampler",
            mujoco_objects=self.cubes,
            x_range=[-r, r],
            y_range=[-r, r],
            rotation=None,
            ensure_object_boundary_in_range=False,
            ensure_valid_placement=True,
            reference_pos=self.table_offset,
            z_offset=0.01,
            rng=self.rng,
        )
        self.model = ManipulationTask(
            mujoco_arena=arena,
            mujoco_robots=[robot.robot_model for robot in self.robots],
            mujoco_objects=self.cubes,
        )

    def _setup_references(self):
        super()._setup_references()
        self.cube_body_ids = [self.sim.model.body_name2id(c.root_body) for c in self.cubes]
        self.cube_visual_geom_ids = [
            [self.sim.model.geom_name2id(g) for g in c.visual_geoms] for c in self.cubes
        ]

    def _reset_internal(self):
        super()._reset_internal()
        if not self.deterministic_reset:
            for obj_pos, obj_quat, obj in self.placement_initializer.sample().values():
                self.sim.data.set_joint_qpos(obj.joints[0], np.concatenate([np.array(obj_pos), np.array(obj_quat)]))
        idx = self.rng.choice(len(self.colors), size=3, replace=False)
        self.cube_colors = [self.colors[i] for i in idx]
        for geoms, name in zip(self.cube_visual_geom_ids, self.cube_colors):
            for g in geoms:
                self.sim.model.geom_rgba[g] = PALETTE[name]
        self._choose_goal()

    # ----- goal / success -----
    def _choose_goal(self):
        raise NotImplementedError

    def cube_positions(self) -> np.ndarray:
        """(3, 3) world positions of cube0..cube2."""
        return np.stack([np.array(self.sim.data.body_xpos[b]) for b in self.cube_body_ids])

    def _lifted(self) -> np.ndarray:
        table_z = self.model.mujoco_arena.table_offset[2]
        return self.cube_positions()[:, 2] > table_z + LIFT_HEIGHT

    def reward(self, action=None):
        return float(self._check_success())


class PickColorEnv(_ColorCubesEnv):
    """"pick up the <color> cube": the named cube lifted, the other two not."""

    def _choose_goal(self):
        self.target = int(self.rng.integers(3))
        self.instruction = f"pick up the {self.cube_colors[self.target]} cube"

    def object_order(self) -> list[int]:
        """Cube indices ordered target first (privileged positions use this order)."""
        return [self.target] + [i for i in range(3) if i != self.target]

    def _check_success(self):
        lifted = self._lifted()
        return bool(lifted[self.target] and lifted.sum() == 1)


class StackColorEnv(_ColorCubesEnv):
    """"put the <A> cube on the <B> cube": A rests on B, released, for any ordered pair."""

    def _choose_goal(self):
        a, b = self.rng.choice(3, size=2, replace=False)
        self.top, self.bottom = int(a), int(b)
        self.instruction = f"put the {self.cube_colors[self.top]} cube on the {self.cube_colors[self.bottom]} cube"

    def object_order(self) -> list[int]:
        return [self.top, self.bottom] + [i for i in range(3) if i not in (self.top, self.bottom)]

    def _check_success(self):
        pos = self.cube_positions()
        top, bottom = pos[self.top], pos[self.bottom]
        table_z = self.model.mujoco_arena.table_offset[2]
        above = top[2] > table_z + LIFT_HEIGHT and np.linalg.norm(top[:2] - bottom[:2]) < CUBE_HALF * 1.5
        touching = self.check_contact(self.cubes[self.top], self.cubes[self.bottom])
        grasped = self._check_grasp(gripper=self.robots[0].gripper, object_geoms=self.cubes[self.top])
        return bool(above and touching and not grasped)


__all__ = ["PALETTE", "DEFAULT_COLORS", "CUBE_HALF", "LIFT_HEIGHT", "PickColorEnv", "StackColorEnv"]
