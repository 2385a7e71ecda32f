"""Scripted expert for LIBERO's "pick up the X and place it in the basket" tasks (all of libero_object).

A waypoint state machine over privileged simulator state, in the style of `sim.experts`: it reads the target and
the container from the task's BDDL goal `(In <target> <container>_contain_region)`, measures both from their
collision geoms (world bounding boxes, the target's narrow horizontal side), and returns a 7-D action in [-1, 1]
for LIBERO's OSC_POSE controller (delta position x0.05 m, delta axis-angle x0.5 rad, gripper -1 open / +1 closed).

Phases: above the target -> down to the grasp point -> close -> lift -> above the basket's contain region (steering
the carried object, not the hand) -> lower -> open until the fingers part -> back off upwards. The grasp (point along
the object's long side, closing-axis yaw) is planned while above it so that the palm, long along the closing axis,
clears the neighbouring objects. A dropped object, a missed grasp or a descent stuck on a neighbour sends it back to
phase 0 (a stuck plan is not tried again). `noise` adds Gaussian noise to the executed arm dimensions;
`clean_action` is the noise-free label for the same state (DART-style), which is what the demos store.

Runs inside the LIBERO venv (numpy + the env object only; no torch, no robosuite import).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POS_SCALE = 0.05  # m per unit action (OSC_POSE output limit)
ROT_SCALE = 0.5  # rad per unit action
OPEN, CLOSED = -1.0, 1.0

# phases of the state machine
ABOVE, DESCEND, CLOSE, LIFT, CARRY, LOWER, RELEASE, RETREAT = range(8)
PHASE_NAMES = ("above", "descend", "close", "lift", "carry", "lower", "release", "retreat")


def quat_xyzw_to_mat(q) -> np.ndarray:
    x, y, z, w = (float(v) for v in q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rot_error(current: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) in the world frame that rotates orientation `current` (3x3) onto `goal` (3x3)."""
    r = goal @ current.T
    angle = math.acos(float(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)))
    if angle < 1e-6:
        return np.zeros(3)
    if angle > math.pi - 1e-4:  # 180 degrees: the axis is the eigenvector of r with eigenvalue 1
        w, v = np.linalg.eigh((r + r.T) / 2)
        return v[:, int(np.argmax(w))] * angle
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * math.sin(angle))
    return axis * angle


def rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def wrap_half_pi(angle: float) -> float:
    """An angle modulo pi, in [-pi/2, pi/2): a parallel gripper is symmetric under a half turn."""
    return (angle + math.pi / 2) % math.pi - math.pi / 2


def parse_pick_place_goal(goal_state: list) -> tuple[str, str]:
    """LIBERO's parsed BDDL goal -> (target object, container object) for `(And (In <obj> <container>_<region>))`."""
    goals = [g for g in goal_state if g]
    if len(goals) != 1 or len(goals[0]) != 3 or str(goals[0][0]).lower() != "in":
        raise ValueError(f"goal: expected one (In <object> <container>_contain_region) predicate, got {goal_state!r}")
    _, target, region = goals[0]
    suffix = "_contain_region"
    if not region.endswith(suffix):
        raise ValueError(f"goal: expected a region named <container>{suffix}, got {region!r}")
    return target, region[: -len(suffix)]


def task_objects(env) -> tuple[str, str]:
    """(target, container) of a LIBERO pick-and-place env (OffScreenRenderEnv or its inner BDDL env).

    Read from the BDDL goal and checked against the env's `obj_of_interest` when it lists both."""
    inner = getattr(env, "env", env)
    target, container = parse_pick_place_goal(inner.parsed_problem["goal_state"])
    interest = list(getattr(inner, "obj_of_interest", []) or [])
    if interest and not {target, container} <= set(interest):
        raise ValueError(f"goal: target {target!r} / container {container!r} not in obj_of_interest {interest}")
    return target, container


@dataclass(frozen=True)
class ObjectBox:
    lo: np.ndarray  # (3,) world AABB of the object's collision geoms
    hi: np.ndarray  # (3,)
    centre_xy: np.ndarray  # (2,) centre of the footprint in its narrow/long frame
    narrow_yaw: float  # rad; world direction (mod pi) across the footprint's narrow side
    narrow_width: float  # m; footprint width along narrow_yaw
    long_half: float  # m; half the footprint's extent across narrow_yaw
    points_xy: np.ndarray  # (P, 2) footprint points (collision-box corners)

    def width_along(self, yaw: float) -> float:
        proj = self.points_xy @ np.array([math.cos(yaw), math.sin(yaw)])
        return float(proj.max() - proj.min())


_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)


def _body_points(env, body_name: str, subtree: bool = True) -> np.ndarray:
    """(8 * n_geoms, 3) world corners of the collision geoms' local bounding boxes of `body_name` (and, with
    `subtree`, of the bodies below it)."""
    sim = env.sim
    m, d = sim.model._model, sim.data._data
    bid = sim.model.body_name2id(body_name)
    owner = np.asarray(m.geom_bodyid)
    if subtree:
        inside = np.zeros(m.nbody, dtype=bool)
        inside[bid] = True
        for b in range(bid + 1, m.nbody):  # MuJoCo orders bodies parents first
            inside[b] = inside[b] or inside[int(m.body_parentid[b])]
        mask = inside[owner]
    else:
        mask = owner == bid
    mask &= (np.asarray(m.geom_contype) != 0) | (np.asarray(m.geom_conaffinity) != 0)
    geoms = np.flatnonzero(mask)
    if geoms.size == 0:
        raise ValueError(f"object: body {body_name!r} has no collision geoms")
    local = m.geom_aabb[geoms, None, :3] + _SIGNS[None] * m.geom_aabb[geoms, None, 3:]  # (G, 8, 3)
    rot = d.geom_xmat[geoms].reshape(-1, 3, 3)
    world = d.geom_xpos[geoms, None, :] + np.einsum("gij,gkj->gki", rot, local)
    return world.reshape(-1, 3)


def object_box(env, name: str, prefer_yaw: float = 0.0) -> ObjectBox:
    """Measure object `name` (LIBERO body `<name>_main`): bounds and the narrowest horizontal direction.

    Near-ties (round cans) resolve to the direction closest to `prefer_yaw`: the gripper turns no more than needed."""
    pts = _body_points(env, f"{name}_main")
    xy = pts[:, :2]
    angles = np.deg2rad(np.arange(0.0, 180.0, 3.0))
    dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (A, 2)
    proj = xy @ dirs.T  # (P, A)
    widths = proj.max(0) - proj.min(0)
    near = widths <= widths.min() + 0.004
    turn = np.abs([wrap_half_pi(a - prefer_yaw) for a in angles])
    k = int(np.argmin(np.where(near, turn, np.inf)))
    u, v = dirs[k], np.array([-dirs[k][1], dirs[k][0]])
    pu, pv = xy @ u, xy @ v
    centre = u * (pu.max() + pu.min()) / 2 + v * (pv.max() + pv.min()) / 2
    return ObjectBox(pts.min(0), pts.max(0), centre, float(angles[k]), float(widths[k]),
                     float((pv.max() - pv.min()) / 2), xy)


@dataclass(frozen=True)
class HandShape:
    half_length: float  # m; the palm's half extent along the closing axis
    half_width: float  # m; across it
    bottom: float  # m; the palm's lowest point above the grip site


HAND_BODY = "gripper0_right_gripper"
GRIP_SITE = "gripper0_grip_site"


def hand_shape(env) -> HandShape:
    """The palm's extent in the grip site's frame (fingers excluded: they move, and stay within the palm's length)."""
    pts = _body_points(env, HAND_BODY, subtree=False)
    site = np.array(env.sim.data.get_site_xpos(GRIP_SITE))
    rot = np.array(env.sim.data.get_site_xmat(GRIP_SITE)).reshape(3, 3)
    local = np.abs((pts - site) @ rot)  # (P, 3) in the site frame
    # the palm is long along the fingers' closing axis (which of the site's x/y that is depends on the gripper model)
    long_half, short_half = sorted((float(local[:, 0].max()), float(local[:, 1].max())), reverse=True)
    return HandShape(long_half, short_half, float((pts - site)[:, 2].min()))


def _footprint_grid(lo: np.ndarray, hi: np.ndarray, n: int = 5) -> np.ndarray:
    """(n*n, 2) points covering the xy box [lo, hi]."""
    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


def hand_clearance(centre_xy, yaw: float, hand: HandShape, obstacles: list[np.ndarray]) -> float:
    """m between the palm's footprint (closing axis along `yaw`, centred at `centre_xy`) and the nearest obstacle
    point; 0 when they overlap."""
    if not obstacles:
        return 1.0
    pts = np.concatenate(obstacles, axis=0) - np.asarray(centre_xy)[None, :2]
    c, s = math.cos(yaw), math.sin(yaw)
    along, across = pts @ np.array([c, s]), pts @ np.array([-s, c])
    dx = np.maximum(np.abs(along) - hand.half_length, 0.0)
    dy = np.maximum(np.abs(across) - hand.half_width, 0.0)
    return float(np.hypot(dx, dy).min())


@dataclass
class ExpertConfig:
    noise: float = 0.05  # std of the Gaussian added to the executed position actions (rotation: x0.3)
    gain: float = 1.2  # proportional gain on position error, in units of the per-step limit
    rot_gain: float = 1.0
    approach_height: float = 0.07  # m above the target's top before descending
    grasp_depth: float = 0.035  # m below the target's top where the fingers close (capped at half its height)
    floor_clearance: float = 0.012  # m; the grasp point never goes lower than this above the target's bottom
    above_tol: float = 0.008  # m; settle this close above the grasp point before descending (no sideways sweep)
    grasp_tol: float = 0.008  # m
    close_steps: int = 10  # steps holding still while the fingers close
    carry_clearance: float = 0.04  # m between the carried object's bottom and the basket's rim
    release_height: float = 0.035  # m between the carried object's bottom and the basket's floor at release
    release_open: float = 0.01  # m; fingers must part this much beyond their release width before backing off
    retreat: float = 0.10  # m up after release
    miss_width: float = 0.004  # m; a closed gripper narrower than this holds nothing
    max_grip_width: float = 0.068  # m; widest object span the open fingers (0.08) are asked to close on
    want_clearance: float = 0.015  # m between the palm and the neighbours; more is not worth a detour


class LiberoPickPlaceExpert:
    """Pick `target` and place it in `container`'s contain region; see the module docstring."""

    def __init__(self, target: str, container: str, config: ExpertConfig | None = None, seed: int | None = None):
        self.target, self.container = target, container
        self.cfg = config or ExpertConfig()
        if self.cfg.noise < 0:
            raise ValueError(f"noise: expected >= 0, got {self.cfg.noise}")
        self.rng = np.random.default_rng(seed)
        self.reset()

    @classmethod
    def for_env(cls, env, config: ExpertConfig | None = None, seed: int | None = None) -> "LiberoPickPlaceExpert":
        target, container = task_objects(env)
        return cls(target, container, config, seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.phase = ABOVE
        self.phase_steps = 0
        self.reached_steps = 0
        self.retries = 0
        self.goal_rot: np.ndarray | None = None  # 3x3; turned onto the grasp yaw while above/descending, then held
        self.grasp: np.ndarray | None = None  # (3,) hand position at the grasp
        self.obj_below_hand = 0.0  # m from the grasp point down to the object's bottom
        self.release_width = 0.0
        self.hand: HandShape | None = None
        self.plan_yaw = 0.0  # rad; world yaw of the closing axis at the grasp
        self.plan_clearance = 1.0
        self.blocked: list[tuple[np.ndarray, float]] = []  # grasp plans whose descent got stuck
        # per-episode jitter of heights and grasp point: diversity without changing the strategy
        self.jitter = self.rng.uniform(-1, 1, size=4) * (self.cfg.noise > 0)
        self.clean_action = np.zeros(7, dtype=np.float32)

    def _goto(self, phase: int) -> None:
        self.phase, self.phase_steps, self.reached_steps = phase, 0, 0

    def _region_pos(self, env) -> np.ndarray:
        """(3,) world position of the container's contain-region site (the success check's box centre)."""
        return np.array(env.sim.data.get_site_xpos(f"{self.container}_contain_region"), dtype=np.float64)

    def _plan_grasp(self, env, obj: ObjectBox, grasp_z: float, close_yaw: float) -> tuple[np.ndarray, float]:
        """Grasp point (xy) and closing-axis yaw that keep the palm clear of the neighbours.

        Candidates: the footprint centre shifted along the object's long side, and the narrow direction turned by up
        to 45 degrees while the span across the fingers stays graspable. Score: clearance (capped at
        want_clearance) first, then the smallest shift and turn."""
        cfg = self.cfg
        hand_bottom = grasp_z + self.hand.bottom
        obstacles = []
        for name in getattr(env.env, "objects_dict", {}):
            if name == self.target:
                continue
            box = object_box(env, name)
            if box.hi[2] > hand_bottom - 0.01:
                obstacles.append(_footprint_grid(box.lo, box.hi))
        long_dir = np.array([-math.sin(obj.narrow_yaw), math.cos(obj.narrow_yaw)])
        reach = max(0.0, obj.long_half - 0.02)
        best, best_score = (obj.centre_xy, obj.narrow_yaw, 1.0), -np.inf
        for shift in np.linspace(-reach, reach, 5) if reach > 0 else [0.0]:
            centre = obj.centre_xy + shift * long_dir
            for turn in np.deg2rad([0, 10, -10, 20, -20, 30, -30, 45, -45]):
                yaw = obj.narrow_yaw + turn
                if turn != 0 and obj.width_along(yaw) > cfg.max_grip_width:
                    continue
                clear = hand_clearance(centre, yaw, self.hand, obstacles)
                score = min(clear, cfg.want_clearance) * 100 - 0.1 * (abs(turn) / 0.5 + abs(shift) / 0.03)
                for b_centre, b_yaw in self.blocked:  # a descent that got stuck here before: try elsewhere
                    if np.linalg.norm(centre - b_centre) < 0.01 and abs(wrap_half_pi(yaw - b_yaw)) < 0.2:
                        score -= 1.0
                if score > best_score:
                    best, best_score = (centre, yaw, clear), score
        centre, yaw, self.plan_clearance = best
        return np.asarray(centre, dtype=np.float64), float(yaw)

    def act(self, env, obs: dict) -> np.ndarray:
        cfg, j = self.cfg, self.jitter
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        cur_rot = quat_xyzw_to_mat(obs["robot0_eef_quat"])
        q = obs["robot0_gripper_qpos"]
        width = float(q[0] - q[1])
        if self.goal_rot is None:
            self.goal_rot = cur_rot
        close_axis = cur_rot @ np.array([0.0, 1.0, 0.0])  # fingers close along the hand's y axis
        close_yaw = math.atan2(close_axis[1], close_axis[0])
        obj = object_box(env, self.target, prefer_yaw=close_yaw)
        obj_centre = np.array([obj.centre_xy[0], obj.centre_xy[1], (obj.lo[2] + obj.hi[2]) / 2])
        basket = object_box(env, self.container)
        region = self._region_pos(env)
        height = float(obj.hi[2] - obj.lo[2])
        grasp_z = max(obj.hi[2] - min(cfg.grasp_depth + 0.005 * j[1], height / 2), obj.lo[2] + cfg.floor_clearance)

        # a lost object (dropped while carrying) or a missed grasp: start over from above it
        if LIFT <= self.phase <= LOWER:
            held = np.linalg.norm(eef[:2] - obj_centre[:2]) < 0.06 and width > cfg.miss_width
            if not held:
                self.retries += 1
                self._goto(ABOVE)

        if self.hand is None:
            self.hand = hand_shape(env)
        if self.phase == ABOVE or self.grasp is None:  # plan while above; the descent keeps the plan
            centre, self.plan_yaw = self._plan_grasp(env, obj, grasp_z, close_yaw)
            self.grasp = np.array([centre[0], centre[1], grasp_z])
            self.obj_below_hand = grasp_z - float(obj.lo[2])
        if self.phase <= DESCEND:
            self.goal_rot = rot_z(wrap_half_pi(self.plan_yaw - close_yaw)) @ cur_rot
        g = self.grasp
        rim = float(basket.hi[2])
        carry_z = rim + cfg.carry_clearance + self.obj_below_hand + 0.02 * j[2]
        floor = float(basket.lo[2]) + 0.01
        release_z = floor + cfg.release_height + self.obj_below_hand + 0.01 * j[3]
        # while carrying, steer the object (not the hand) over the region: correct for where the hand holds it
        hand_minus_obj = np.zeros(3)
        if self.phase >= LIFT:
            hand_minus_obj[:2] = np.clip(eef[:2] - obj_centre[:2], -0.03, 0.03)
        over = np.array([region[0], region[1], 0.0]) + hand_minus_obj

        if self.phase == ABOVE:
            target, gripper, tol, hold, max_steps = (
                np.array([g[0], g[1], max(obj.hi[2] + cfg.approach_height + 0.02 * j[0], grasp_z + 0.05)]),
                OPEN, cfg.above_tol, 2, 80)
        elif self.phase == DESCEND:
            target, gripper, tol, hold, max_steps = g, OPEN, cfg.grasp_tol, 1, 50
        elif self.phase == CLOSE:
            target, gripper, tol, hold, max_steps = g, CLOSED, 1.0, cfg.close_steps, cfg.close_steps + 1
        elif self.phase == LIFT:
            target, gripper, tol, hold, max_steps = np.array([eef[0], eef[1], carry_z]), CLOSED, 0.02, 0, 50
            target[:2] = g[:2]
        elif self.phase == CARRY:
            target, gripper, tol, hold, max_steps = np.array([over[0], over[1], carry_z]), CLOSED, 0.012, 0, 80
        elif self.phase == LOWER:
            target, gripper, tol, hold, max_steps = np.array([over[0], over[1], release_z]), CLOSED, 0.012, 0, 50
        elif self.phase == RELEASE:
            if self.phase_steps == 0:
                self.release_width = width
            opened = width > self.release_width + cfg.release_open
            target, gripper, tol, hold, max_steps = eef.copy(), OPEN, 1.0 if opened else 0.0, 0, 25
        else:
            target, gripper, tol, hold, max_steps = (np.array([eef[0], eef[1], release_z + cfg.retreat]), OPEN, 0.01,
                                                     0, 10**6)

        err = target - eef
        if np.linalg.norm(err) < tol:
            self.reached_steps += 1
        self.phase_steps += 1
        if self.phase < RETREAT and (self.reached_steps > hold or self.phase_steps >= max_steps):
            if self.phase == CLOSE and width < cfg.miss_width:  # closed on nothing
                self.retries += 1
                self._goto(ABOVE)
            elif self.phase == DESCEND and err[2] < -0.015:  # stuck above the grasp point (the palm hit something)
                self.blocked.append((g[:2].copy(), self.plan_yaw))
                self.retries += 1
                self._goto(ABOVE)
            else:
                self._goto(self.phase + 1)

        a = np.zeros(7)
        a[:3] = np.clip(err / POS_SCALE * cfg.gain, -1, 1)
        a[3:6] = np.clip(rot_error(cur_rot, self.goal_rot) / ROT_SCALE * cfg.rot_gain, -1, 1)
        a[6] = gripper
        self.clean_action = np.clip(a, -1, 1).astype(np.float32)
        if cfg.noise > 0:
            a[:3] += self.rng.normal(0, cfg.noise, 3)
            a[3:6] += self.rng.normal(0, cfg.noise * 0.3, 3)
        return np.clip(a, -1, 1).astype(np.float32)
