"""Shared pieces of the robot-server tests: a scripted policy for the policy server, waiting for the arm to rest."""

from __future__ import annotations

import threading
import time

import numpy as np

CAMERAS = ("agentview", "wrist")


class ScriptedPolicy:
    """A policy for PolicyServer that plays a fixed list of chunks, one per request, then zeros.

    chunks: list of float32 (H, D). The i-th infer answers chunks[i] (or zeros once they run out).
    """

    def __init__(self, chunks: list[np.ndarray], image_size: int = 64, horizon: int = 8):
        self.chunks = [np.asarray(c, np.float32) for c in chunks]
        self.h = horizon
        self.image_size = image_size
        self.calls = 0
        self.lock = threading.Lock()

    @property
    def metadata(self) -> dict:
        s = self.image_size
        return {"policy_type": "scripted", "action_dim": 7, "chunk_size": self.h, "n_action_steps": self.h,
                "cameras": {c: [s, s, 3] for c in CAMERAS}, "state_dim": 9}

    def reset(self) -> None:
        with self.lock:
            self.calls = 0

    def infer_batch(self, obs_list: list[dict]) -> list[dict]:
        out = []
        for obs in obs_list:
            for c in CAMERAS:  # the robot side must deliver the schema the policy asked for
                im = obs["images"][c]
                assert im.dtype == np.uint8 and im.shape == (self.image_size, self.image_size, 3), im.shape
            with self.lock:
                i, self.calls = self.calls, self.calls + 1
            chunk = self.chunks[i] if i < len(self.chunks) else np.zeros((self.h, 7), np.float32)
            out.append({"actions": chunk.copy(), "timing": {}})
        return out


def wait_at_rest(client, timeout_s: float = 10.0, window_s: float = 0.3, tol_m: float = 3e-4,
                 keepalive: bool = False) -> np.ndarray:
    """Wait until the published eef position moves less than tol_m over window_s; returns that position (3,).
    keepalive: meanwhile stream zero actions (the target stays; the watchdog does not stop the arm early).
    Raises AssertionError after timeout_s (franky-sim may run well below real time on a loaded machine)."""
    end = time.monotonic() + timeout_s
    st = client.wait_state(lambda s: s.get("state") is not None, 2.0)
    assert st is not None, "no state publication"
    prev = np.asarray(st["state"][:3], np.float64)
    while time.monotonic() < end:
        if keepalive:
            stream(client, np.zeros(7, np.float32), max(1, int(window_s * 20)))
        else:
            time.sleep(window_s)
        st = client.latest_state(timeout_ms=100)
        pos = np.asarray(st["state"][:3], np.float64)
        if np.linalg.norm(pos - prev) < tol_m:
            return pos
        prev = pos
    raise AssertionError(f"the arm did not come to rest within {timeout_s} s (last position {prev.round(4)})")


def stream(client, action, steps: int, rate_hz: float = 20.0) -> float:
    """Send `action` steps times at rate_hz (fire and forget); returns time.time() just before the last send
    (taken before the call: the server may receive the message before send_command returns)."""
    period = 1.0 / rate_hz
    t0 = time.perf_counter()
    last = time.time()
    for i in range(steps):
        last = time.time()
        client.send_command(action)
        time.sleep(max(0.0, t0 + (i + 1) * period - time.perf_counter()))
    return last


def sim_env_no_render(task: str = "Lift"):
    """A real robosuite env without cameras or a GL context: usable from any thread (robot-server tests)."""
    from sim.env import VLAEnv

    return VLAEnv(task, image_size=64, cameras=(), render_mode=None)


class FaultyUR:
    """A stand-in for ur-rtde's three interfaces (no UR simulator runs here) whose arm moves as commanded: servoL
    jumps the TCP to the target, speedL moves it at the commanded velocity (integrated on the wall clock) until
    speedStop/servoStop. `fail` maps a method name ("servoL", "speedStop", "getActualTCPPose", ...) to an exception
    that method raises (ur-rtde raises RuntimeError); `drift` (3,) m is added to the measured position (a sensor
    error); push() moves the arm itself (an outside force); `nan` makes the measured pose NaN. Every call is recorded
    in `calls` as (name, args, time.monotonic())."""

    def __init__(self, pose=(0.0, -0.35, 0.2, np.pi, 0.0, 0.0)):
        self.calls: list = []
        self.fail: dict = {}
        self.drift = np.zeros(3)
        self.nan = False
        self.lock = threading.Lock()
        self._pos = np.asarray(pose[:3], np.float64)
        self._rot = np.asarray(pose[3:], np.float64)
        self._vel = np.zeros(3)
        self._t = time.monotonic()
        fake = self

        def method(name, result=True):
            def call(*args):
                with fake.lock:
                    fake.calls.append((name, args, time.monotonic()))
                    err = fake.fail.get(name)
                if err is not None:
                    raise err
                return fake._do(name, args, result)
            return call

        class Interface:
            def __init__(self, *args):
                pass

            def __getattr__(self, item):
                return method(item)

        self.RTDEControlInterface = self.RTDEReceiveInterface = self.RTDEIOInterface = Interface

    def _advance(self) -> None:
        now = time.monotonic()
        self._pos = self._pos + self._vel * (now - self._t)
        self._t = now

    def _do(self, name, args, result):
        with self.lock:
            self._advance()
            if name == "getActualTCPPose":
                p = np.concatenate([self._pos + self.drift, self._rot])
                return [float("nan")] * 6 if self.nan else p.tolist()
            if name in ("isProtectiveStopped", "isEmergencyStopped"):
                return False
            if name == "servoL":
                self._pos = np.asarray(args[0][:3], np.float64)
                self._rot = np.asarray(args[0][3:], np.float64)
            elif name == "speedL":
                self._vel = np.asarray(args[0][:3], np.float64)
            elif name in ("speedStop", "servoStop", "triggerProtectiveStop", "stopScript"):
                self._vel = np.zeros(3)
        return result

    def push(self, d) -> None:
        """Move the arm by d (3,) m, as a collision or an operator would."""
        with self.lock:
            self._advance()
            self._pos = self._pos + np.asarray(d, np.float64)

    def position(self) -> np.ndarray:
        """The arm's true TCP position (3,) now (without drift)."""
        with self.lock:
            self._advance()
            return self._pos.copy()

    def named(self, name: str) -> list:
        with self.lock:
            return [c for c in self.calls if c[0] == name]
