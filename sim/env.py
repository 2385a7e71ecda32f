"""Gymnasium environments over robosuite with the stack's one observation schema.

Observation (every task, see docs/ARCHITECTURE.md):
    {"images": {"agentview": uint8 (S, S, 3), "wrist": uint8 (S, S, 3)},   # upright
     "state": float32 (9,),   # eef position (3), eef quaternion xyzw (4), gripper finger qpos (2)
     "instruction": str}
Action: float32 (7,) in [-1, 1]: delta eef position (3, x0.05 m), delta rotation axis-angle (3, x0.5 rad),
gripper (-1 open, +1 closed). Reward: 1.0 on success, else 0. An episode terminates on success and is
truncated at the task's horizon.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np

from sim.tasks import TaskSpec, get_task

STATE_DIM = 9
ACTION_DIM = 7
CAMERA_SOURCES = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
DEFAULT_CAMERAS = ("agentview", "wrist")


def _errors_only(record) -> bool:
    return record.levelno >= 40  # logging.ERROR


def _quiet_robosuite() -> None:
    """robosuite's import warns about its private macro file, robosuite_models and mink (robots and IK we do not
    use), then sets its logger back to INFO: a filter on the logger drops everything below ERROR whatever its level,
    on its own handler and on any the application configured."""
    import logging

    for name in ("robosuite_logs", "robosuite", "robosuite.utils.log_utils"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.ERROR)
        if _errors_only not in lg.filters:
            lg.addFilter(_errors_only)
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # "No OpenGL_accelerate module loaded" (INFO)


def validate_action(action, dim: int = ACTION_DIM) -> np.ndarray:
    """Return the action as float64 (dim,) clipped to [-1, 1]; ValueError on wrong shape or non-finite values."""
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"action: expected a numeric array of shape ({dim},), got {type(action).__name__}") from e
    if a.shape != (dim,):
        raise ValueError(f"action: expected shape ({dim},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = np.where(~np.isfinite(a))[0].tolist()
        raise ValueError(f"action: NaN or inf at index {bad}: {a.tolist()}")
    return np.clip(a, -1.0, 1.0)


def configure_fast_rendering(rs_env, size: int) -> None:
    """Reflections, shadows and MSAA off on robosuite's offscreen context; framebuffer sized to the cameras.

    With a software renderer (Mesa llvmpipe) robosuite's defaults (a 640x480 4x-MSAA buffer, reflections, shadows)
    make every small camera frame pay for effects and pixels it never shows.
    """
    import mujoco

    ctx = getattr(rs_env.sim, "_render_context_offscreen", None)
    if ctx is None:
        return
    model = rs_env.sim.model
    if model.vis.quality.offsamples != 0 or model.vis.global_.offwidth != size or model.vis.global_.offheight != size:
        model.vis.global_.offwidth = size
        model.vis.global_.offheight = size
        model.vis.quality.offsamples = 0
        ctx.con.free()
        ctx._set_mujoco_context_and_buffers()
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0


def outside_view(model, data, camera: str, aspect: float = 1.0) -> np.ndarray | None:
    """bool (ngeom,): geoms whose bounding sphere lies wholly outside `camera`'s view cone (None: no such camera).

    Conservative: the cone circumscribes the view frustum (half-angle from the frame's diagonal), a geom counts as
    outside only if its whole bounding sphere (geom_rbound about geom_xpos) is, and geoms without a bound (planes)
    or around the camera never are. So hiding them cannot change a pixel; it only skips their vertices.
    """
    import mujoco

    cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cid < 0:
        return None
    rot = data.cam_xmat[cid].reshape(3, 3)  # columns: camera x, y, z in world; the camera looks along -z
    rel = data.geom_xpos - data.cam_xpos[cid]  # (ngeom, 3)
    dist = np.linalg.norm(rel, axis=1)
    depth = -(rel @ rot[:, 2])
    lateral = np.linalg.norm(rel @ rot[:, :2], axis=1)
    half_y = np.deg2rad(model.cam_fovy[cid]) / 2
    half_diag = np.arctan(np.tan(half_y) * np.sqrt(1.0 + aspect * aspect))
    rbound = model.geom_rbound
    off_axis = np.arctan2(lateral, depth)  # 0 on the optical axis, pi behind the camera
    spread = np.arcsin(np.clip(rbound / np.maximum(dist, 1e-9), 0.0, 1.0))
    return (rbound > 0) & (dist > rbound) & (off_axis - spread > half_diag)


class VLAEnv(gym.Env):
    """One robosuite task behind the shared observation schema. Deterministic under `reset(seed=...)`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str = "Lift",
        image_size: int = 128,
        cameras: tuple[str, ...] | list[str] = DEFAULT_CAMERAS,
        horizon: int | None = None,
        colors: tuple[str, ...] | None = None,
        render_mode: str | None = "rgb_array",
        seed: int | None = None,
    ):
        super().__init__()
        _quiet_robosuite()
        import robosuite as suite

        import sim.color_envs  # noqa: F401  (registers the colour-cube envs with robosuite)

        self.spec_ = get_task(task) if isinstance(task, str) else task
        self.task: TaskSpec = self.spec_
        cameras = tuple(cameras)
        unknown = [c for c in cameras if c not in CAMERA_SOURCES]
        if unknown:
            raise ValueError(f"cameras: unknown {unknown}; expected names from {list(CAMERA_SOURCES)}")
        if image_size < 16 or image_size > 1024:
            raise ValueError(f"image_size: expected 16..1024 pixels, got {image_size}")
        self.cameras = cameras
        self.image_size = int(image_size)
        self.horizon = int(horizon or self.task.horizon)
        self.render_mode = render_mode
        kwargs = dict(self.task.env_kwargs)
        if colors is not None:
            if self.task.robosuite_env not in ("PickColorEnv", "StackColorEnv"):
                raise ValueError(f"colors: only the colour tasks take colors, not {self.task.name}")
            kwargs["colors"] = tuple(colors)
        self._rs = suite.make(
            self.task.robosuite_env,
            robots="Panda",
            has_renderer=False,
            has_offscreen_renderer=bool(cameras) or render_mode == "rgb_array",
            # cameras are rendered by observe(), only when an observation is asked for (see advance()); the pixels
            # are the ones robosuite's camera observables return (tests/test_sim_envs.py checks it)
            use_camera_obs=False,
            hard_reset=False,
            ignore_done=True,
            horizon=100_000,
            reward_shaping=False,
            # construction-time randomness (Lift draws its cube size from env.rng) must not differ between
            # instances: two envs built for the same task are the same env; reset(seed) draws the episode
            seed=0 if seed is None else seed,
            **kwargs,
        )
        configure_fast_rendering(self._rs, self.image_size)
        s = self.image_size
        self.observation_space = gym.spaces.Dict(
            {
                "images": gym.spaces.Dict(
                    {c: gym.spaces.Box(0, 255, (s, s, 3), dtype=np.uint8) for c in cameras}
                ),
                "state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), dtype=np.float32),
                "instruction": gym.spaces.Text(max_length=256),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)
        self._t = 0
        self._last_rs_obs: dict | None = None  # robosuite's proprio observation of step self._t (no images)
        self._obs: dict | None = None  # the schema observation of step self._t, built on first request
        self._has_reset = False

    # ----- gymnasium API -----
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # robosuite draws every placement and the robot's init noise from env.rng; the samplers hold the same
            # Generator object, so reseed it in place.
            self._rs.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        self._make_current()
        self._last_rs_obs = self._rs.reset()
        self._obs = None
        self._t = 0
        self._has_reset = True
        return self.observe(), self._info(False)

    def step(self, action):
        reward, terminated, truncated, info = self.advance(action)
        return self.observe(), reward, terminated, truncated, info

    def advance(self, action) -> tuple[float, bool, bool, dict]:
        """step() without the observation: (reward, terminated, truncated, info); observe() renders it on demand.

        With a software renderer (Mesa llvmpipe) the camera frames are most of a step's cost, and a policy that
        replans every N steps reads them only every N-th step.
        """
        if not self._has_reset:
            raise RuntimeError("step() called before reset()")
        a = validate_action(action)
        self._make_current()
        self._last_rs_obs, _, _, _ = self._rs.step(a)
        self._obs = None
        self._t += 1
        success = bool(self._rs._check_success())
        truncated = self._t >= self.horizon and not success
        return float(success), success, truncated, self._info(success)

    def observe(self) -> dict:
        """The observation of the current step (the one step() returns); rendered once, then the same dict."""
        if not self._has_reset:
            raise RuntimeError("observe() called before reset()")
        if self._obs is None:
            self._make_current()
            self._obs = self._make_obs(self._last_rs_obs)
        return self._obs

    def _make_current(self) -> None:
        """robosuite renders into whichever EGL context is current; with several envs in one process (or after
        another env was closed) it must be this env's."""
        ctx = getattr(self._rs.sim, "_render_context_offscreen", None)
        if ctx is not None and self.cameras:
            ctx.gl_ctx.make_current()

    def render(self):
        if "agentview" in self.cameras and self._has_reset:
            return self.observe()["images"]["agentview"].copy()
        self._make_current()
        img = self._rs.sim.render(camera_name="agentview", width=self.image_size, height=self.image_size)
        return img[::-1].copy()

    def close(self):
        if getattr(self, "_rs", None) is not None:
            self._rs.close()
            self._rs = None

    # ----- schema -----
    @property
    def instruction(self) -> str:
        return self.task.instruction or self._rs.instruction

    @property
    def t(self) -> int:
        return self._t

    def state(self) -> np.ndarray:
        """The current step's proprio state without rendering anything: float32 (9,) = eef pos (3), eef quat xyzw
        (4), gripper qpos (2); the same values observe()["state"] holds. A fresh array on every call."""
        if not self._has_reset:
            raise RuntimeError("state() called before reset()")
        return _state(self._last_rs_obs)

    def _make_obs(self, rs_obs: dict) -> dict:
        images = {c: self._render_camera(CAMERA_SOURCES[c]) for c in self.cameras}
        return {"images": images, "state": _state(rs_obs), "instruction": self.instruction}

    def _render_camera(self, name: str) -> np.ndarray:
        """robosuite's camera_rgb sensor (sim.render, OpenGL row order) flipped upright; uint8 (S, S, 3).

        Geoms that cannot appear in this camera's view are hidden while it renders (frustum culling): Mesa's
        llvmpipe shades every vertex of every drawn mesh (the Panda's meshes dominate), so this saves time on both
        cameras, most on the wrist camera, which sees little of the arm; the pixels stay the same
        (tests/test_sim_envs.py).
        """
        s, sim = self.image_size, self._rs.sim
        model = getattr(sim.model, "_model", sim.model)
        hidden = outside_view(model, getattr(sim.data, "_data", sim.data), name)  # square frames
        shown = sim._render_context_offscreen.vopt.geomgroup
        off = [g for g in range(len(shown)) if not shown[g]]  # a geom group this context does not draw
        groups = None
        if hidden is not None and hidden.any() and off:
            groups = model.geom_group.copy()
            model.geom_group[hidden] = off[-1]
        try:
            return np.ascontiguousarray(sim.render(camera_name=name, width=s, height=s)[::-1])
        finally:
            if groups is not None:
                model.geom_group[:] = groups

    def _info(self, success: bool) -> dict:
        return {"success": success, "t": self._t}

    # ----- privileged simulator state (experts, auxiliary targets, never the policy) -----
    def privileged(self) -> dict:
        """World-frame quantities the scripted experts and the auxiliary head use.

        object_pos: float32 (3, 3), rows ordered as `TaskSpec.object_names` (unused rows zero).
        """
        rs = self._rs
        name = self.task.robosuite_env
        obj = np.zeros((3, 3), dtype=np.float64)
        if name == "Lift":
            obj[0] = rs.sim.data.body_xpos[rs.cube_body_id]
        elif name == "Stack":
            obj[0] = rs.sim.data.body_xpos[rs.cubeA_body_id]
            obj[1] = rs.sim.data.body_xpos[rs.cubeB_body_id]
        elif name == "PickPlaceCan":
            can = rs.objects[rs.object_id]
            obj[0] = rs.sim.data.body_xpos[rs.obj_body_id[can.name]]
            obj[1] = rs.target_bin_placements[rs.object_id]
        else:  # colour-cube tasks
            obj[:] = rs.cube_positions()[rs.object_order()]
        eef = self._last_rs_obs
        return {
            "object_pos": obj.astype(np.float32),
            "eef_pos": np.asarray(eef["robot0_eef_pos"], dtype=np.float64),
            "eef_quat": np.asarray(eef["robot0_eef_quat"], dtype=np.float64),
            "gripper_qpos": np.asarray(eef["robot0_gripper_qpos"], dtype=np.float64),
            "table_z": float(self._table_z()),
            "sim_state": np.asarray(rs.sim.get_state().flatten(), dtype=np.float64),
        }

    def _table_z(self) -> float:
        arena = self._rs.model.mujoco_arena
        if hasattr(arena, "table_offset"):
            return float(arena.table_offset[2])
        return float(self._rs.bin1_pos[2])

    def env_args(self) -> dict:
        """robomimic's env metadata (type 1 = robosuite), stored as `data.attrs["env_args"]`: robomimic's
        create_env_from_metadata calls robosuite.make(env_name, **env_kwargs) with it (tests/test_sim_envs.py makes
        that call). The colour tasks' robosuite classes live in sim.color_envs: import it first."""
        return {
            "env_name": self.task.robosuite_env,
            "type": 1,
            "env_kwargs": {
                "robots": "Panda",
                "control_freq": 20,
                "reward_shaping": False,
                "horizon": self.horizon,
                "camera_names": [CAMERA_SOURCES[c] for c in self.cameras],
                "camera_heights": self.image_size,
                "camera_widths": self.image_size,
                **dict(self.task.env_kwargs),
            },
        }

    def vla_env_args(self) -> dict:
        """This project's own description (`data.attrs["vla_env_args"]`): our task name, cameras, image size."""
        return {
            "env_name": self.task.name,
            "type": "vla-stack",
            "env_kwargs": {
                "robosuite_env": self.task.robosuite_env,
                "image_size": self.image_size,
                "cameras": list(self.cameras),
                "horizon": self.horizon,
                "robots": "Panda",
                "controller": "OSC_POSE",
                "control_freq": 20,
            },
        }


def _state(rs_obs: dict) -> np.ndarray:
    """robosuite's proprio observables -> float32 (9,): eef pos (3), eef quat xyzw (4), gripper qpos (2)."""
    return np.concatenate(
        [rs_obs["robot0_eef_pos"], rs_obs["robot0_eef_quat"], rs_obs["robot0_gripper_qpos"]]
    ).astype(np.float32)
