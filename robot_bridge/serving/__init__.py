"""The policy server: any policy (infer_batch, reset, metadata) behind the ZeroMQ protocol, with dynamic batching
and openpi's websocket protocol. Above the robot-side core (it imports only robot_bridge.protocol and security); not
part of the robot-side distribution (robot_bridge/pyproject.toml): a robot PC runs clients, not policy servers."""
