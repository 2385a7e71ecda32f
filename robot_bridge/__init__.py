"""The robot side: wire protocol, policy client, fixed-rate control loop, robot server, arm adapters, safety.
numpy, msgpack and pyzmq only; imports neither `vla` nor `sim` (installable alone: robot_bridge/pyproject.toml).

    protocol.py       wire format (msgpack, openpi array layout), validation, error codes
    client.py         PolicyClient (numpy, msgpack, pyzmq only: no torch on the robot)
    control_loop.py   ControlLoop (the one episode runner: sync and async), Robot interface, EnvRobot, EpisodeLog
    ensemble.py       temporal ensembling of overlapping chunks (ACT)
    serving/          the policy server (a layer above: server.py ROUTER + batcher.py + openpi.py websocket); not in
                      the robot-side distribution
  robot side (docs/ROBOTS.md):
    robot_server.py   RobotServer: latest-wins commands, state publication, watchdog, e-stop
    robot_protocol.py its messages                           robot_client.py   RobotClient, RemoteRobot (ControlLoop)
    robots/           Robot interface and adapters: franka (franky), ur (ur-rtde), xarm; franky_sim.py; sim (plugin)
    reach.py          is a workspace box within the arm's reach
    safety.py         clip, workspace box, per-step limits    cameras.py        OpenCV and MuJoCo cameras
    security.py       CurveZMQ keys (both servers)           robot_cli.py      `vla robot-server`, `vla run`, `vla keys`
    geometry.py       quaternion / rotation-vector / rpy helpers (numpy only)
    net.py            free_port (standard library only)

Nothing is imported here, so `import robot_bridge.client` stays light. See docs/PROTOCOL.md.
"""
