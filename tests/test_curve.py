"""CurveZMQ on both servers: a client with an allow-listed key works; an unknown key (or none) gets no reply and
moves nothing."""

from __future__ import annotations

import numpy as np
import pytest
from robot_helpers import ScriptedPolicy, sim_env_no_render

from robot_bridge.client import PolicyClient
from robot_bridge.robot_client import RobotClient
from robot_bridge.robot_server import RobotServer
from sim.robot import SimRobot
from robot_bridge.security import KeyFileError, generate_keypair
from robot_bridge.serving.server import PolicyServer


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


def test_secret_key_file_is_never_readable_by_others(tmp_path, monkeypatch):
    """The secret file is created with mode 0600 (a temporary name opened with that mode, then renamed), so there is
    no moment when the umask's mode lets others read it; checked at the rename, with a permissive umask."""
    import os
    import stat

    import robot_bridge.security as S

    seen = {}
    real = os.replace

    def spy(src, dst):
        seen[dst] = stat.S_IMODE(os.stat(src).st_mode)
        real(src, dst)

    monkeypatch.setattr(S.os, "replace", spy)
    old = os.umask(0)
    try:
        pub, sec = generate_keypair(str(tmp_path), "robot")
    finally:
        os.umask(old)
    assert seen[sec] == 0o600 and stat.S_IMODE(os.stat(sec).st_mode) == 0o600
    assert seen[pub] == 0o644
    import zmq.auth

    public, secret = zmq.auth.load_certificate(sec)  # zmq's own reader takes our files
    assert secret is not None and zmq.auth.load_certificate(pub) == (public, None)


def test_openpi_bind_error_says_the_websocket_has_no_keys(keys):
    srv = PolicyServer(ScriptedPolicy([]), bind="tcp://127.0.0.1:0", server_secret_key=keys["server"][1],
                       authorized_keys=keys["workstation"][0], openpi_port=0, openpi_host="0.0.0.0")
    with pytest.raises(ValueError, match="openpi_host: .* has no authentication") as ei:
        srv.start()
    assert "no server key is set" not in str(ei.value)


def test_insecure_binds_warn_on_both_servers(caplog):
    import logging

    caplog.set_level(logging.WARNING)
    robot = SimRobot(env=sim_env_no_render())
    srv = RobotServer(robot, bind="tcp://0.0.0.0:0", insecure=True)  # the check runs at construction
    psrv = PolicyServer(ScriptedPolicy([]), bind="tcp://0.0.0.0:0", insecure=True).start()
    psrv.stop()
    del srv
    warned = [r.getMessage() for r in caplog.records if "without authentication (--insecure)" in r.getMessage()]
    assert len(warned) >= 3, warned  # robot server: bind + state bind; policy server: bind
