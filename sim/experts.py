"""Scripted experts: waypoint state machines over privileged simulator state.

Each expert reads `env.privileged()` (object and end-effector positions) and returns a 7-D action in
[-1, 1] for robosuite's OSC_POSE controller (delta position x0.05 m, delta axis-angle x0.5 rad,
gripper -1 open / +1 closed). `noise` adds Gaussian noise to the arm dimensions for demonstration
diversity; the expert closes the loop, so noisy runs still finish.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.env import VLAEnv

POS_SCALE = 0.05  # m per unit action (OSC_POSE output limit)
ROT_SCALE = 0.5  # rad per unit action
OPEN, CLOSED = -1.0, 1.0


def _quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rot_error(current_xyzw: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) that rotates the current orientation onto `goal` (3x3), in the world frame."""
    r = goal @ _quat_xyzw_to_mat(current_xyzw).T
    angle = np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * np.sin(angle))
    return axis * angle


@dataclass
class Waypoint:
    pos: np.ndarray  # (3,) world target for the end effector
    gripper: float  # -1 open, +1 closed
    tol: float = 0.01  # m; reached when within this distance
    hold: int = 0  # extra steps to stay once reached (gripper closing, settling)
    max_steps: int = 60  # give up waiting and move on (the success check decides the episode)


class ScriptedExpert:
    """Base: follows a list of waypoints rebuilt from the live object positions at every step."""

    gain = 1.2  # proportional gain on position error (in units of the per-step limit)
    grasp_tol = 0.008  # m; the gripper closes once the hand is this close to the grasp point

    def __init__(self, noise: float = 0.0, seed: int | None = None, rotate: bool = False):
        """rotate=False: top-down grasps with zero rotation actions (the OSC controller holds the orientation well
        enough for every task's expert to succeed), which leaves the policy four meaningful action
        dimensions. rotate=True also servoes the start orientation and adds noise on the rotation dimensions."""
        if noise < 0:
            raise ValueError(f"noise: expected >= 0, got {noise}")
        self.noise = float(noise)
        self.rotate = bool(rotate)
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.phase = 0
        self.phase_steps = 0
        self.reached_steps = 0
        self.goal_rot: np.ndarray | None = None
        # per-episode jitter of grasp/approach heights: diversity without changing the strategy
        self.jitter = self.rng.uniform(-1, 1, size=4) * (self.noise > 0)

    def waypoints(self, p: dict) -> list[Waypoint]:
        raise NotImplementedError

    def act(self, env: VLAEnv) -> np.ndarray:
        p = env.privileged()
        if self.goal_rot is None:
            self.goal_rot = _quat_xyzw_to_mat(p["eef_quat"])  # keep the start orientation (gripper down)
        wps = self.waypoints(p)
        if self.phase >= len(wps):
            wp = wps[-1]
        else:
            wp = wps[self.phase]
        err = wp.pos - p["eef_pos"]
        if np.linalg.norm(err) < wp.tol:
            self.reached_steps += 1
        self.phase_steps += 1
        if self.phase < len(wps) - 1 and (self.reached_steps > wp.hold or self.phase_steps >= wp.max_steps):
            self.phase += 1
            self.phase_steps = 0
            self.reached_steps = 0
        a = np.zeros(7)
        a[:3] = np.clip(err / POS_SCALE * self.gain, -1, 1)
        if self.rotate:
            a[3:6] = np.clip(_rot_error(p["eef_quat"], self.goal_rot) / ROT_SCALE, -1, 1)
        a[6] = wp.gripper
        self.clean_action = np.clip(a, -1, 1).astype(np.float32)
        if self.noise > 0:
            a[:3] += self.rng.normal(0, self.noise, 3)
            if self.rotate:
                a[3:6] += self.rng.normal(0, self.noise * 0.3, 3)
        return np.clip(a, -1, 1).astype(np.float32)


class PickExpert(ScriptedExpert):
    """Grasp object row 0 and lift it (Lift, PickColor)."""

    lift_height = 0.15

    def waypoints(self, p):
        obj = p["object_pos"][0].astype(np.float64)
        j = self.jitter
        above = obj + np.array([0, 0, 0.08 + 0.02 * j[0]])
        grasp = obj + np.array([0, 0, -0.003 + 0.004 * j[1]])
        return [
            Waypoint(above, OPEN, tol=0.015, max_steps=50),
            Waypoint(grasp, OPEN, tol=self.grasp_tol, max_steps=40),
            Waypoint(grasp, CLOSED, tol=1.0, hold=6, max_steps=10),
            Waypoint(np.array([obj[0], obj[1], p["table_z"] + self.lift_height]), CLOSED, tol=0.01),
        ]


class PickPlaceExpert(ScriptedExpert):
    """Grasp object row 0, carry it above row 1, lower it onto row 1 and release, then back off."""

    carry_clearance = 0.10  # m above the place target while carrying
    place_offset = 0.045  # m above the target's centre where the carried object's centre is released
    grasp_offset = -0.003
    retreat = 0.10
    place_tol = 0.01  # m; how close the carried object must get above/onto the target
    target_shift = np.zeros(3)  # aim point relative to the privileged target position
    release_open = 0.01  # m; the fingers must part this much beyond their width at the release point before lifting
    release_max_steps = 25  # give up waiting for them after this many steps

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._release_width = 0.0

    def waypoints(self, p):
        obj = p["object_pos"][0].astype(np.float64)
        tgt = p["object_pos"][1].astype(np.float64) + self.target_shift
        j = self.jitter
        if self.phase <= 2:
            self._grasp = obj.copy()
        g = self._grasp
        above = g + np.array([0, 0, 0.08 + 0.02 * j[0]])
        grasp = g + np.array([0, 0, self.grasp_offset + 0.004 * j[1]])
        carry_z = max(tgt[2], g[2]) + self.carry_clearance + 0.02 * j[2]
        place = tgt + np.array([0, 0, self.place_offset])
        # while carrying, steer the *object* (not the hand) above the target: correct for the grasp offset
        # (bounded, and only while the object is in the hand; a dropped object sends the expert back to grasp it)
        hand_minus_obj = np.zeros(3)
        if 3 <= self.phase <= 5:
            off = p["eef_pos"] - obj
            if np.linalg.norm(off) > 0.06:
                self.phase, self.phase_steps, self.reached_steps = 0, 0, 0
                return self.waypoints(p)
            hand_minus_obj[:2] = np.clip(off[:2], -0.02, 0.02)
        return [
            Waypoint(above, OPEN, tol=0.015, max_steps=50),
            Waypoint(grasp, OPEN, tol=self.grasp_tol, max_steps=40),
            Waypoint(grasp, CLOSED, tol=1.0, hold=6, max_steps=10),
            Waypoint(np.array([g[0], g[1], carry_z]), CLOSED, tol=0.02, max_steps=40),
            Waypoint(np.array([tgt[0], tgt[1], carry_z]) + hand_minus_obj, CLOSED, tol=self.place_tol, max_steps=60),
            Waypoint(place + hand_minus_obj + np.array([0, 0, self._hand_above_obj(p)]), CLOSED,
                     tol=self.place_tol * 0.8, max_steps=40),
            self._open_in_place(p),
            Waypoint(np.array([tgt[0], tgt[1], tgt[2] + self.place_offset + self.retreat]) + hand_minus_obj, OPEN,
                     tol=0.01),
        ]

    def _open_in_place(self, p) -> Waypoint:
        """Phase 6: hold the hand still with the gripper opening until the fingers have visibly parted.

        The gripper's command ramps over several steps while the fingers still squeeze the object, so "open for a
        fixed count, then lift" labels the same observed state (hand at the release point, fingers on the object)
        both "stay and open" and "lift": a policy that lifts early carries the object away again (docs/EXPERIMENTS.md,
        StackColor). Moving on only once the finger opening (in the state) has grown keeps the
        labels a function of what the policy sees."""
        width = float(p["gripper_qpos"][0] - p["gripper_qpos"][1])  # m, finger opening
        if self.phase != 6:
            self._release_width = width
        opened = width > self._release_width + self.release_open
        return Waypoint(p["eef_pos"].copy(), OPEN, tol=1.0 if opened else 0.0, hold=0, max_steps=self.release_max_steps)

    def _hand_above_obj(self, p) -> float:
        return -self.grasp_offset


class StackExpert(PickPlaceExpert):
    """Stack, StackColor: the 4 cm cube's centre released 4.5 cm above the base cube's centre."""

    def waypoints(self, p):
        return super().waypoints(p)


class CanExpert(PickPlaceExpert):
    """PickPlaceCan: higher carry (bin walls), release above the target bin, lift the hand away."""

    carry_clearance = 0.15
    place_offset = 0.10
    grasp_offset = 0.0
    retreat = 0.08
    place_tol = 0.02
    # close on the can from 1.5 cm, wider than the base class's tolerance: a policy tends to stop just short of the
    # can, and its demos must show the gripper closing from there (docs/EXPERIMENTS.md, multi-task section)
    grasp_tol = 0.015
    # the target bin quadrant (20 x 25 cm) lies at the edge of the Panda's reach: aim at its near part
    target_shift = np.array([-0.05, -0.06, 0.0])


EXPERTS: dict[str, type[ScriptedExpert]] = {
    "Lift": PickExpert,
    "PickColor": PickExpert,
    "Stack": StackExpert,
    "StackColor": StackExpert,
    "PickPlaceCan": CanExpert,
}


def make_expert(task: str, noise: float = 0.0, seed: int | None = None, rotate: bool = False) -> ScriptedExpert:
    from sim.tasks import get_task

    return EXPERTS[get_task(task).name](noise=noise, seed=seed, rotate=rotate)


def run_expert_episode(env: VLAEnv, expert: ScriptedExpert, seed: int, record=None) -> tuple[bool, int]:
    """Roll out one episode; `record(obs, action, privileged)` is called before every step.

    The env executes the noisy action; `record` gets the expert's clean action for that state (DART-style:
    noise widens the states the demos visit without putting noise into the labels).
    """
    obs, _ = env.reset(seed=seed)
    expert.reset(seed=seed)
    for t in range(env.horizon):
        a = expert.act(env)
        if record is not None:
            record(obs, expert.clean_action, env.privileged())
        obs, _, terminated, truncated, info = env.step(a)
        if terminated:
            return True, t + 1
        if truncated:
            break
    return False, env.t
