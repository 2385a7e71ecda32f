"""The `sim` robot through the robot server gives the same episodes as the in-process env: same per-step actions
(sync mode), same states, same success rate, for the same policies and seeds."""

from __future__ import annotations

import numpy as np
import pytest
from bridge_helpers import free_port  # noqa: F401  (sets torch threads)

from robot_bridge.control_loop import ControlLoop, EnvRobot, LoopConfig
from robot_bridge.robot_client import RemoteRobot
from robot_bridge.robot_server import RobotServer
from sim.robot import SimRobot, gl_current, gl_release

SEEDS = (3, 4)


class ReplayPolicy:
    """Replays recorded per-seed action sequences as chunks (a scripted policy: the expert's own actions)."""

    def __init__(self, episodes: dict, chunk: int = 4):  # = the loop's replan_every: each chunk is used whole
        self.episodes, self.chunk = episodes, chunk
        self.seed = None
        self.t = 0

    def reset(self):
        self.t = 0

    def infer(self, obs):
        acts = self.episodes[self.seed]
        out = np.zeros((self.chunk, 7), np.float32)
        part = acts[self.t: self.t + self.chunk]
        out[: len(part)] = part
        self.t += self.chunk
        return {"actions": out}


@pytest.fixture(scope="module")
def env():
    from sim.env import VLAEnv

    e = VLAEnv("Lift", image_size=64)
    yield e
    e.close()


def _gl(env):
    gl_current(env)


def _run(loop, seeds, before=None, max_steps=None):
    logs, states = [], []
    for s in seeds:
        if before:
            before(s)
        st = []
        logs.append(loop.run_episode(seed=s, max_steps=max_steps, keep_actions=True,
                                     on_step=lambda t, obs, a: st.append(np.asarray(obs["state"]).copy())))
        states.append(np.stack(st))
    return logs, states


def test_sim_robot_server_matches_in_process_env(env):
    from sim.experts import make_expert
    from vla.policy import Policy

    # in-process: the scripted expert (it reads the simulator's privileged state) succeeds; record its actions and
    # states, and replay the actions as a policy through the server below
    recorded, expert_states = {}, {}
    for s in SEEDS:
        _gl(env)
        expert = make_expert("Lift", noise=0.0)
        obs, _ = env.reset(seed=s)
        expert.reset(seed=s)
        acts, states = [], []
        for _ in range(120):
            a = expert.act(env)
            acts.append(a)
            states.append(np.asarray(obs["state"]).copy())
            obs, _, term, _, _ = env.step(a)
            if term:
                break
        assert term, f"the scripted expert failed seed {s}"
        recorded[s], expert_states[s] = np.asarray(acts, np.float32), np.stack(states)
    replay = ReplayPolicy(recorded)
    untrained = Policy.untrained("tiny")
    cfg = LoopConfig(mode="sync", replan_every=4)
    set_seed = lambda s: setattr(replay, "seed", s)  # noqa: E731

    class _GLEnvRobot(EnvRobot):
        def reset(self, seed=None):
            _gl(self.env)
            return super().reset(seed)

        def apply(self, action):
            _gl(self.env)
            super().apply(action)

    local_untrained = _run(ControlLoop(untrained, _GLEnvRobot(env), cfg), SEEDS, max_steps=12)

    # the same env instance on the server's thread: two instances render slightly different pixels (GL state), which
    # flips tokens of an untrained policy. EGL lets a context be current in one thread at a time: release it here.
    gl_release(env)
    robot = SimRobot(env=env)  # permissive safety: only the action limits could intervene
    srv = RobotServer(robot, bind="tcp://127.0.0.1:0", watchdog_ms=100).start()
    remote = RemoteRobot(srv.address, sync=True, timeout_ms=10_000)
    try:
        assert remote.meta["robot"] == "sim" and remote.meta["clock"] == "stepped"
        via_replay = _run(ControlLoop(replay, remote, cfg), SEEDS, set_seed, max_steps=120)
        via_untrained = _run(ControlLoop(untrained, remote, cfg), SEEDS, max_steps=12)
        counters = dict(srv.counts)
        safety = robot.safety.summary()
    finally:
        remote.close()
        srv.stop()

    # untrained policy: every action depends on the observation; same actions and states both ways
    (l_logs, l_states), (r_logs, r_states) = local_untrained, via_untrained
    for s, a, b, sa, sb in zip(SEEDS, l_logs, r_logs, l_states, r_states):
        assert a.length == b.length == 12, s
        np.testing.assert_array_equal(np.asarray(a.actions), np.asarray(b.actions), err_msg=f"seed {s}")
        np.testing.assert_array_equal(sa, sb, err_msg=f"seed {s}: states differ")
        assert a.success == b.success, s
    # scripted policy: the expert's episodes, step for step, and the same success rate (all succeed)
    for s, lg, st in zip(SEEDS, *via_replay):
        assert lg.success, f"seed {s}: replayed expert failed through the server"
        assert lg.length == len(recorded[s]), s
        np.testing.assert_array_equal(np.asarray(lg.actions, np.float32), recorded[s])
        np.testing.assert_array_equal(st, expert_states[s], err_msg=f"seed {s}: states differ")
    n_steps = sum(lg.length for lg in via_replay[0] + via_untrained[0])
    assert counters["applied"] == n_steps and safety["intervened"] == 0
    assert not any(k.startswith("dropped") for k in counters), counters


def test_sim_robot_renders_only_when_observed(env):
    """Applying actions steps the physics only; snapshot() renders the current step once (cached), with the same
    pixels and state as the gymnasium step() path. Fails if SimRobot renders every step or serves a stale frame."""
    robot = SimRobot(env=env).connect()
    robot.reset(seed=5)
    renders = []
    render = env._render_camera
    env._render_camera = lambda name: (renders.append(name), render(name))[1]
    rng = np.random.default_rng(0)
    try:
        applied = []
        for _ in range(3):
            a = np.zeros(7, np.float32)
            a[:3] = rng.uniform(-0.5, 0.5, 3)
            applied.append(robot.send_action(a))
        assert renders == [], "applying actions rendered the cameras"
        state = robot.get_state()
        snap = robot.snapshot()
        assert len(renders) == len(env.cameras)
        again = robot.snapshot()
        assert len(renders) == len(env.cameras), "a second snapshot of the same step rendered again"
        applied.append(robot.send_action(applied[0]))
        after = robot.snapshot()  # a new step: rendered anew
        assert len(renders) == 2 * len(env.cameras)
    finally:
        del env._render_camera
    np.testing.assert_array_equal(snap["state"], state)
    for c in env.cameras:
        assert snap["images"][c] is again["images"][c]
    gl_current(env)
    obs, _ = env.reset(seed=5)
    for i, a in enumerate(applied):
        obs = env.step(a)[0]
        seen = {2: snap, len(applied) - 1: after}.get(i)  # what the robot served after the same steps
        if seen is not None:
            for c in env.cameras:
                np.testing.assert_array_equal(seen["images"][c], obs["images"][c], err_msg=f"step {i}: {c}")
            np.testing.assert_array_equal(seen["state"], obs["state"], err_msg=f"step {i}")
    robot.disconnect()
