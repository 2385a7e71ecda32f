"""Serving and control: policy server (ZeroMQ + openpi websocket), robot-side client, fixed-rate control loop.

    protocol.py       wire format (msgpack, openpi array layout), validation, error codes
    batcher.py        the worker thread that owns the policy and batches requests
    server.py         PolicyServer (ROUTER socket)           openpi_server.py  openpi's websocket protocol
    client.py         PolicyClient (numpy, msgpack, pyzmq only: no torch on the robot)
    control_loop.py   ControlLoop, Robot interface, EnvRobot  remote_eval.py    `vla eval --server`
    cli.py            `vla serve`
  robot side (docs/ROBOTS.md):
    robot_server.py   RobotServer: latest-wins commands, state publication, watchdog, e-stop
    robot_protocol.py its messages                           robot_client.py   RobotClient, RemoteRobot (ControlLoop)
    robots/           Robot interface and adapters: sim, franka (franky), ur (ur-rtde), xarm; franky_sim.py
    safety.py         clip, workspace box, per-step limits    cameras.py        OpenCV and MuJoCo cameras
    security.py       CurveZMQ keys (both servers)           robot_cli.py      `vla robot-server`, `vla run`, `vla keys`
    geometry.py       quaternion / rotation-vector / rpy helpers (numpy only)

Nothing is imported here, so `import robot_bridge.client` stays light. See docs/PROTOCOL.md.
"""
