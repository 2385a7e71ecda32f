"""CurveZMQ on both servers: a client with an allow-listed key works; an unknown key (or none) gets no reply and
moves nothing."""

from __future__ import annotations

import numpy as np
import pytest
from robot_helpers import ScriptedPolicy, sim_env_no_render

from robot_bridge.client import PolicyClient
from robot_bridge.robot_client import RobotClient
from robot_bridge.robot_server import RobotServer
from robot_bridge.robots.sim import SimRobot
from robot_bridge.security import KeyFileError, generate_keypair
from robot_bridge.server import PolicyServer


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("server", "workstation", "stranger"):
        out[name] = generate_keypair(str(d / ("allowed" if name == "workstation" else "other")), name)
    return out  # name -> (public .key, secret .key_secret); only the workstation is in the allowed directory


def _obs(size=64):
    rng = np.random.default_rng(0)
    return {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in ("agentview", "wrist")},
            "state": np.zeros(9, np.float32), "instruction": "lift the cube"}


def test_robot_server_only_obeys_allow_listed_keys(keys):
    env = sim_env_no_render()
    robot = SimRobot(env=env)
    srv = RobotServer(robot, bind="tcp://127.0.0.1:0", server_secret_key=keys["server"][1],
                      authorized_keys=str(keys["workstation"][0].rsplit("/", 1)[0])).start()
    a = np.zeros(7, np.float32)
    a[0] = 0.5
    try:
        stranger = RobotClient(srv.address, timeout_ms=700, client_secret_key=keys["stranger"][1],
                               server_public_key=keys["server"][0])
        with pytest.raises(TimeoutError):
            stranger.hello()
        for _ in range(3):
            stranger.send_command(a)  # fire and forget: never reaches the robot
        with pytest.raises(TimeoutError):
            stranger.command(a, timeout_ms=700)
        stranger.close()
        plain = RobotClient(srv.address, timeout_ms=700)  # no Curve at all
        with pytest.raises(TimeoutError):
            plain.hello()
        plain.close()
        assert robot.steps == 0 and srv.counts["received"] == 0 and srv.auth.denied >= 1

        friend = RobotClient(srv.address, timeout_ms=3000, client_secret_key=keys["workstation"][1],
                             server_public_key=keys["server"][0])
        assert friend.hello()["secure"] is True
        assert friend.command(a)["kind"] == "applied" and robot.steps == 1
        assert friend.wait_state(lambda s: s["counters"].get("applied") == 1, 2.0) is not None  # encrypted PUB too
        friend.close()
    finally:
        srv.stop()
        env.close()


def test_policy_server_only_answers_allow_listed_keys(keys):
    policy = ScriptedPolicy([np.ones((8, 7), np.float32)])
    srv = PolicyServer(policy, bind="tcp://127.0.0.1:0", server_secret_key=keys["server"][1],
                       authorized_keys=keys["workstation"][0]).start()  # a single .key file as the allow-list
    try:
        stranger = PolicyClient(srv.address, timeout_ms=700, retries=0, client_secret_key=keys["stranger"][1],
                                server_public_key=keys["server"][0])
        with pytest.raises(TimeoutError):
            stranger.infer(_obs())
        stranger.close()
        assert policy.calls == 0 and srv.counts["received"] == 0
        friend = PolicyClient(srv.address, timeout_ms=3000, client_secret_key=keys["workstation"][1],
                              server_public_key=keys["server"][0])
        out = friend.infer(_obs())
        np.testing.assert_array_equal(out["actions"], np.ones((8, 7), np.float32))
        friend.close()
    finally:
        srv.stop()


def test_open_network_bind_is_refused_and_bad_keys_are_named(keys, tmp_path):
    policy = ScriptedPolicy([])
    with pytest.raises(ValueError, match="--server-key"):
        PolicyServer(policy, bind="tcp://0.0.0.0:0").start()
    srv = PolicyServer(policy, bind="tcp://0.0.0.0:0", insecure=True).start()  # explicitly allowed
    srv.stop()
    with pytest.raises(RuntimeError, match="no secret key"):  # a public key where the secret one belongs
        PolicyServer(policy, bind="tcp://127.0.0.1:0", server_secret_key=keys["server"][0],
                     authorized_keys=keys["workstation"][0]).start()
    with pytest.raises(KeyFileError, match="no \\*.key files"):
        from robot_bridge.security import load_authorized

        load_authorized(str(tmp_path))
    with pytest.raises(FileExistsError):
        generate_keypair(keys["server"][0].rsplit("/", 1)[0], "server")
