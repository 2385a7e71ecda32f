"""Serving and control: policy server (ZeroMQ + openpi websocket), robot-side client, fixed-rate control loop.

    protocol.py       wire format (msgpack, openpi array layout), validation, error codes
    batcher.py        the worker thread that owns the policy and batches requests
    server.py         PolicyServer (ROUTER socket)           openpi_server.py  openpi's websocket protocol
    client.py         PolicyClient (numpy, msgpack, pyzmq only: no torch on the robot)
    control_loop.py   ControlLoop, Robot interface, EnvRobot  remote_eval.py    `vla eval --server`
    cli.py            `vla serve`

Nothing is imported here, so `import robot_bridge.client` stays light. See docs/PROTOCOL.md.
"""
