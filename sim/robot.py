"""A robosuite/MuJoCo task (sim.env.VLAEnv) as a robot behind the robot server.

The simulator is "stepped": it advances one control step per applied action and stands still otherwise, so hold
and e-stop need no motion (time stops). A step runs the physics only; the cameras are rendered when an
observation is asked for (`snapshot`, on the robot server's thread), so a client that replans every N steps pays
for N-1 fewer renders. Its safety defaults are permissive (only the action limits can intervene):
robosuite's controller already bounds a step to 0.05 m / 0.5 rad, and the same policy and seeds must give the same
episodes through the server as in-process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_bridge.robots.base import ActionSpec, ObservationSpec, Robot, RobotError
from robot_bridge.safety import SafetyConfig


@dataclass(frozen=True)
class SimConfig:
    task: str = "Lift"
    image_size: int = 128
    cameras: tuple[str, ...] = ("agentview", "wrist")
    horizon: int | None = None


class SimRobot(Robot):
    name = "sim"
    config_class = SimConfig
    clock = "stepped"

    def __init__(self, config: SimConfig | None = None, env=None, safety: SafetyConfig | None = None,
                 action_spec=None):
        """env: an existing sim.env.VLAEnv (tests share one); otherwise connect() creates one from `config`.
        action_spec: eef_delta (the default, robosuite's OSC_POSE delta) or ActionSpec.eef_absolute()."""
        self.config = config or SimConfig()
        super().__init__(cameras=None, safety=safety, action_spec=action_spec)
        self.env = env
        self._own_env = env is None
        self._live = False  # connected and reset: the env has a current step
        self.done = self.success = False
        self.steps = 0
        self.episodes = 0

    @classmethod
    def default_safety(cls) -> SafetyConfig:
        return SafetyConfig.permissive(ActionSpec())

    # ----- lifecycle -----
    def _connect(self) -> None:
        if self.env is None:
            from sim.env import VLAEnv

            c = self.config
            self.env = VLAEnv(c.task, image_size=c.image_size, cameras=tuple(c.cameras), horizon=c.horizon)
        self._gl_current()
        self.env.reset()
        self._gl_done()
        self._live = True

    def _disconnect(self) -> None:
        self._live = False
        if self._own_env and self.env is not None:
            self.env.close()
            self.env = None

    def _gl_current(self) -> None:
        gl_current(self.env)

    def _gl_done(self) -> None:
        if not self._own_env:  # a shared env: let the thread that shares it make its context current
            gl_release(self.env)

    # ----- state -----
    def _check(self) -> None:
        if not self._live or self.env is None:
            raise RobotError("sim: not connected")

    def get_state(self) -> np.ndarray:
        self._check()
        return self.env.state()  # float32 (9,), a fresh array; no rendering

    def reference_pose(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.get_state()
        return np.asarray(s[0:3], np.float64), np.asarray(s[3:7], np.float64)

    def snapshot(self) -> dict:
        """Renders the current step's cameras (once per step; the env caches them) on the calling thread."""
        import time

        self._check()
        self._gl_current()
        try:
            obs = self.env.observe()  # a new dict of new arrays per step: this snapshot never changes under a reader
        finally:
            self._gl_done()
        return {"state": np.asarray(obs["state"], np.float32).copy(), "t": time.time(), "images": dict(obs["images"])}

    @property
    def observation_spec(self) -> ObservationSpec:
        s = self.config.image_size if self.env is None else self.env.image_size
        cams = self.config.cameras if self.env is None else self.env.cameras
        return ObservationSpec(cameras={c: [s, s, 3] for c in cams})

    @property
    def horizon(self) -> int | None:
        return int(self.env.horizon) if self.env is not None else self.config.horizon

    @property
    def instruction(self) -> str | None:
        return str(self.env.instruction) if self._live and self.env is not None else None

    def status(self) -> dict:
        return {"done": self.done, "success": self.success, "steps": self.steps, "episode": self.episodes}

    # ----- actions -----
    def _apply(self, action: np.ndarray) -> None:
        self._check()
        self._gl_current()
        _, terminated, truncated, _ = self.env.advance(action)  # physics only; snapshot() renders on demand
        self.steps += 1
        self.success = self.success or bool(terminated)
        self.done = bool(terminated or truncated)
        self._gl_done()

    def _hold(self) -> None:
        pass  # stepped: nothing moves until the next action

    def _stop(self) -> None:
        pass  # stepped: nothing moves; send_action is refused until release()

    def reset(self, seed: int | None = None) -> None:
        self._check()
        self._gl_current()
        self.env.reset(seed=seed)
        self._gl_done()
        self.done = self.success = False
        self.steps = 0
        self.episodes += 1


def _gl_context(env):
    ctx = getattr(getattr(getattr(env, "_rs", None), "sim", None), "_render_context_offscreen", None)
    return getattr(ctx, "gl_ctx", None)


def gl_current(env) -> None:
    """robosuite renders into whichever GL context is current: make `env`'s current on this thread."""
    gl = _gl_context(env)
    if gl is not None and hasattr(gl, "make_current"):
        gl.make_current()


def gl_release(env) -> None:
    """Detach `env`'s EGL context from this thread, so another thread can make it current (EGL allows a context
    to be current in one thread at a time). No-op for other GL backends."""
    import sys

    gl = _gl_context(env)
    mod = sys.modules.get(type(gl).__module__) if gl is not None else None
    display = getattr(mod, "EGL_DISPLAY", None)
    if display is None:
        return
    from OpenGL import EGL

    EGL.eglMakeCurrent(display, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, EGL.EGL_NO_CONTEXT)
