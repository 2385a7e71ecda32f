"""`vla robot-server`, `vla run`, `vla keys generate`: the robot-side package's command line. Registered into `vla` by
vla/cli/commands.py; installed alone (robot_bridge/pyproject.toml) as `vla-robot` with the same subcommands."""

from __future__ import annotations

import json
import os


def _floats(text: str, n: int, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise ValueError(f"{what}: expected {n} comma-separated numbers, got {text!r}")
    return vals


# ------------------------------------------------------------------------------------------------- robot-server
def add_robot_server(sub) -> None:
    s = sub.add_parser("robot-server", help="serve a robot arm (or a sim) over ZeroMQ: state, commands, watchdog, "
                                            "safety, e-stop")
    s.add_argument("--robot", required=True, help="sim | franka | ur | xarm")
    s.add_argument("--robot-ip", help="the arm's address (franka FCI, UR, xArm); franky-sim: 127.0.0.1")
    s.add_argument("--bind", default="tcp://127.0.0.1:5560", help="request endpoint (commands, observe, e-stop)")
    s.add_argument("--state-bind", help="state publication endpoint (default: --bind's port + 1)")
    s.add_argument("--rate", type=float, default=50.0, help="state publication rate (Hz)")
    s.add_argument("--watchdog-ms", type=float, default=100.0, help="hold when no valid command for this long")
    s.add_argument("--max-age-ms", type=float, default=100.0, help="drop commands older than this")
    s.add_argument("--camera", action="append", default=[], metavar="NAME=SPEC",
                   help="robot-side camera, e.g. wrist=usb:0@224x224, agentview=sim:fr3-front@128x128 (repeat)")
    g = s.add_argument_group("safety (defaults per robot; see docs/ROBOTS.md)")
    g.add_argument("--workspace", metavar="X0,Y0,Z0,X1,Y1,Z1", help="end-effector box in the base frame (m)")
    g.add_argument("--no-workspace", action="store_true", help="no box (simulators)")
    g.add_argument("--max-step-m", type=float, help="largest translation per command (m)")
    g.add_argument("--max-step-rad", type=float, help="largest rotation per command (rad)")
    g.add_argument("--gripper-range", metavar="LO,HI", help="allowed gripper commands within [-1, 1]")
    g.add_argument("--no-reach-check", action="store_true",
                   help="skip the start-up check that the box's corners are within the arm's reach (only with a "
                        "kinematic check of your own)")
    g = s.add_argument_group("sim")
    g.add_argument("--task", default="Lift")
    g.add_argument("--image-size", type=int, default=128)
    s.add_argument("--action-space", default="eef_delta",
                   choices=["eef_delta", "eef_absolute", "joint_delta", "joint_absolute"],
                   help="what a command means: eef_delta (7: delta position, rotation vector, gripper), eef_absolute "
                        "(7: position m, rotation vector rad, gripper; base frame), joint_delta / joint_absolute (the "
                        "arm's joint changes / targets in rad, then the gripper; franka)")
    g = s.add_argument_group("franka")
    g.add_argument("--control", default="cartesian", help="cartesian | impedance")
    g.add_argument("--no-realtime", action="store_true",
                   help="skip libfranka's realtime-kernel check (franky-sim, kernels without PREEMPT_RT)")
    g.add_argument("--dynamics", type=float, default=0.3, help="relative dynamics factor (0..1]")
    g.add_argument("--home", metavar="Q1,..,Q7", help="joint angles reset moves to (rad)")
    g.add_argument("--auto-recover", action="store_true", help="recover from controller errors once, automatically")
    g = s.add_argument_group("ur")
    g.add_argument("--ur-mode", default="servoL", help="servoL | speedL")
    g.add_argument("--ur-gripper-do", type=int, help="standard digital output of a binary gripper")
    g = s.add_argument_group("security")
    g.add_argument("--server-key", help="CurveZMQ: this server's .key_secret (`vla keys generate`)")
    g.add_argument("--authorized-keys", help="CurveZMQ: client public .key file or directory allowed to command")
    g.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without keys")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=_cmd_robot_server)


def _safety(args, robot_cls):
    from robot_bridge.safety import SafetyConfig

    if not any([args.workspace, args.no_workspace, args.max_step_m, args.max_step_rad, args.gripper_range,
                args.no_reach_check]):
        return None  # the adapter's defaults
    kw = robot_cls.default_safety().to_dict()
    for k in ("workspace_low", "workspace_high"):
        kw[k] = tuple(kw[k]) if kw[k] is not None else None
    if args.workspace:
        v = _floats(args.workspace, 6, "--workspace")
        kw["workspace_low"], kw["workspace_high"] = v[:3], v[3:]
    if args.no_workspace:
        kw["workspace_low"] = kw["workspace_high"] = None
    if args.max_step_m:
        kw["max_step_translation_m"] = args.max_step_m
    if args.max_step_rad:
        kw["max_step_rotation_rad"] = args.max_step_rad
    if args.gripper_range:
        kw["gripper_low"], kw["gripper_high"] = _floats(args.gripper_range, 2, "--gripper-range")
    if args.no_reach_check:
        kw["check_reach"] = False
    return SafetyConfig(**kw)


def build_robot(args):
    """CLI arguments -> an unconnected Robot."""
    from robot_bridge.cameras import make_camera
    from robot_bridge.robots import robot_class

    cls, cfg_cls = robot_class(args.robot)
    cams = {}
    for item in args.camera:
        name, sep, spec = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--camera {item!r}: expected NAME=SPEC, e.g. wrist=usb:0@224x224")
        cams[name] = make_camera(spec)
    action_spec = None  # eef_delta, the adapters' default
    if getattr(args, "action_space", "eef_delta") != "eef_delta":
        from robot_bridge.robots.base import ActionSpec

        if args.action_space not in cls.supported_kinds():
            raise ValueError(f"--action-space: {args.robot} executes {list(cls.supported_kinds())}, not "
                             f"{args.action_space!r}")
        action_spec = ActionSpec.of_kind(args.action_space, len(cls.joint_limits[0]) if cls.joint_limits else None)
    if args.robot == "sim":
        if cams:
            raise ValueError("--camera: the sim robot renders its own cameras (agentview, wrist)")
        cfg = cfg_cls(task=args.task, image_size=args.image_size)
        return cls(cfg, safety=_safety(args, cls), action_spec=action_spec)
    if not args.robot_ip:
        raise ValueError(f"--robot-ip: required for --robot {args.robot}")
    if args.robot == "franka":
        cfg = cfg_cls(host=args.robot_ip, control=args.control, realtime=not args.no_realtime,
                      relative_dynamics_factor=args.dynamics, auto_recover=args.auto_recover,
                      home_joints=_floats(args.home, 7, "--home") if args.home else None)
        return cls(cfg, cameras=cams, safety=_safety(args, cls), action_spec=action_spec)
    elif args.robot == "ur":
        cfg = cfg_cls(host=args.robot_ip, mode=args.ur_mode, gripper_digital_out=args.ur_gripper_do)
    else:
        cfg = cfg_cls(host=args.robot_ip)
    return cls(cfg, cameras=cams, safety=_safety(args, cls), action_spec=action_spec)


def _cmd_robot_server(args) -> int:
    import logging

    from robot_bridge.robot_server import RobotServer, RobotServerConfig

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = RobotServerConfig(bind=args.bind, state_bind=args.state_bind, rate_hz=args.rate,
                            watchdog_ms=args.watchdog_ms, max_command_age_ms=args.max_age_ms,
                            server_secret_key=args.server_key, authorized_keys=args.authorized_keys,
                            insecure=args.insecure)
    robot = build_robot(args)
    server = RobotServer(robot, cfg)
    server.serve_forever(on_start=lambda srv: print(
        f"[vla robot-server] {robot.name} on {srv.address} (state {srv.state_address}); watchdog "
        f"{cfg.watchdog_ms:.0f} ms; safety {robot.safety.config.to_dict()}; Ctrl-C to stop", flush=True))
    return 0


# ---------------------------------------------------------------------------------------------------------- run
def add_run(sub) -> None:
    s = sub.add_parser("run", help="drive a robot server with a policy server through the control loop")
    s.add_argument("--policy-server", required=True, help="tcp://HOST:PORT of `vla serve`")
    s.add_argument("--robot-server", required=True, help="tcp://HOST:PORT of `vla robot-server`")
    s.add_argument("--instruction", help="the task (default: the robot's own, e.g. a sim task's)")
    s.add_argument("--mode", choices=["async", "sync"], default="async",
                   help="async: fixed rate, chunks requested ahead (arms); sync: step by step (simulators)")
    s.add_argument("--rate", type=float, default=20.0, help="control rate (Hz), async mode")
    s.add_argument("--blend", choices=["auto", "none", "linear", "ensemble", "inpaint"], default="auto",
                   help="async mode: how a late chunk takes over (README, 'When a chunk arrives late'): auto = "
                        "inpaint (real-time chunking) when the policy server takes a prefix, else none")
    s.add_argument("--ensemble-coeff", type=float, default=0.01, help="--blend ensemble: weights exp(-COEFF * i)")
    s.add_argument("--steps", type=int, default=200, help="actions per episode")
    s.add_argument("--episodes", type=int, default=1)
    s.add_argument("--seed", type=int, help="first episode's seed (simulators)")
    s.add_argument("--replan-every", type=int, help="sync mode: actions used per chunk")
    s.add_argument("--first-chunk-timeout", type=float, default=30.0,
                   help="async: seconds to wait for an episode's first chunk before the clock starts")
    s.add_argument("--starvation-hold", type=float, default=0.0,
                   help="async: seconds of hold actions on an empty queue before the loop stops commanding (the robot "
                        "server's watchdog then holds the arm); default 0: stop at once")
    s.add_argument("--policy-lost", type=float, default=1.0,
                   help="async: an empty queue this long is reported as a policy-server outage (retried)")
    s.add_argument("--client-key", help="CurveZMQ: this client's .key_secret")
    s.add_argument("--policy-server-key", help="CurveZMQ: the policy server's public .key")
    s.add_argument("--robot-server-key", help="CurveZMQ: the robot server's public .key")
    s.add_argument("--out", help="write the episode logs (JSON) here")
    s.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    """Exit codes: 0 done; 3 the policy server never answered (or an episode got no chunk at all); 4 the robot
    server was lost; 5 the policy's action space is not the robot's. Each with a message on stderr naming the
    server(s)."""
    import sys

    from robot_bridge.client import PolicyClient
    from robot_bridge.control_loop import ControlLoop, LoopConfig
    from robot_bridge.robot_client import RemoteRobot, RobotClient, RobotServerLost
    from robot_bridge.robots.base import hold_for

    def fail(code: int, msg: str) -> int:
        print(f"vla run: {msg}", file=sys.stderr, flush=True)
        return code

    pkeys = dict(client_secret_key=args.client_key, server_public_key=args.policy_server_key) \
        if args.policy_server_key else {}
    rkeys = dict(client_secret_key=args.client_key, server_public_key=args.robot_server_key) \
        if args.robot_server_key else {}
    policy = PolicyClient(args.policy_server, timeout_ms=5000, **pkeys)
    rclient = RobotClient(args.robot_server, timeout_ms=10_000, **rkeys)
    logs, code = [], 0
    try:
        try:
            meta = policy.hello()
        except (TimeoutError, ConnectionError) as e:
            return fail(3, f"policy server at {args.policy_server} did not answer ({e}); is `vla serve` running there?")
        try:
            robot = RemoteRobot(rclient, instruction=args.instruction, sync=args.mode == "sync", max_steps=args.steps)
        except TimeoutError as e:
            return fail(4, f"robot server at {args.robot_server} did not answer ({e}); is `vla robot-server` running "
                           f"there?")
        p_space = (meta.get("action_space") or {}).get("kind", "eef_delta")
        r_spec = robot.meta.get("action_spec") or {}
        r_space = r_spec.get("kind", "eef_delta")
        if p_space != r_space or int(meta["action_dim"]) != int(r_spec.get("dim", meta["action_dim"])):
            return fail(5, f"action space: the policy at {args.policy_server} outputs {p_space} "
                           f"({meta['action_dim']} dims), the robot server at {args.robot_server} executes {r_space} "
                           f"({r_spec.get('dim')} dims); start the robot server with --action-space {p_space}, or "
                           f"serve a policy trained for {r_space}")
        p_arms = len((meta.get("action_space") or {}).get("arms") or [None])
        r_arms = len(r_spec.get("arms") or [None])
        if p_arms != r_arms:
            return fail(5, f"action space: the policy at {args.policy_server} drives {p_arms} arm(s) "
                           f"({(meta.get('action_space') or {}).get('arms')}), the robot server at {args.robot_server} "
                           f"{r_arms}; one robot server per arm layout")
        watchdog_ms = float(robot.meta.get("watchdog_ms") or 0)
        if args.mode == "async" and 0 < watchdog_ms < 2e3 / args.rate:
            print(f"vla run: warning: the robot server's watchdog ({watchdog_ms:.0f} ms) is shorter than two control "
                  f"periods at --rate {args.rate:g} ({2e3 / args.rate:.0f} ms): it will hold the arm between commands; "
                  f"raise its --watchdog-ms or the rate", file=sys.stderr, flush=True)
        cfg = LoopConfig(mode=args.mode, rate_hz=args.rate, first_chunk_timeout_s=args.first_chunk_timeout,
                         hold=hold_for(r_space), blend=getattr(args, "blend", "auto"),
                         ensemble_coeff=getattr(args, "ensemble_coeff", 0.01),
                         starvation_hold_s=args.starvation_hold, policy_lost_s=args.policy_lost,
                         replan_every=args.replan_every or (int(meta.get("n_action_steps", meta["chunk_size"]))
                                                            if args.mode == "sync" else None))
        loop = ControlLoop(policy, robot, cfg, action_dim=int(meta["action_dim"]))
        try:
            for i in range(args.episodes):
                seed = None if args.seed is None else args.seed + i
                try:
                    log = loop.run_episode(seed=seed, max_steps=args.steps)
                except RobotServerLost as e:
                    code = fail(4, f"episode {i}: {e}; stopped (the robot server's watchdog holds the arm if it is "
                                   f"still running)")
                    break
                d = log.to_dict()
                try:
                    d["robot"] = rclient.status()
                except TimeoutError as e:
                    code = fail(4, f"episode {i}: robot server at {args.robot_server} stopped answering ({e})")
                    logs.append(d)
                    break
                logs.append(d)
                st = d["stats"]
                print(json.dumps({"episode": i, "seed": seed, "success": log.success, "length": log.length,
                                  "loop": st, "robot_mode": d["robot"]["status"]["mode"],
                                  "safety": d["robot"]["safety"]}), flush=True)
                if st["chunks"] == 0:
                    code = fail(3, f"episode {i}: no action chunk from the policy server at {args.policy_server} "
                                   f"({st['request_failures']} failed requests; last error: {st['last_error']}); the "
                                   f"arm was not commanded")
                elif st["policy_outages"]:
                    print(f"vla run: episode {i}: {st['policy_outages']} policy-server outage(s) of >= "
                          f"{args.policy_lost:g} s, {st['silent_ticks']} ticks without a command", file=sys.stderr,
                          flush=True)
        finally:
            loop.close()
    finally:
        policy.close()
        rclient.close()
        if args.out and logs:  # a temporary name, then renamed: an interrupted write never truncates an earlier log
            with open(args.out + ".tmp", "w") as f:
                json.dump(logs, f, indent=1, default=float)
            os.replace(args.out + ".tmp", args.out)
    return code


# --------------------------------------------------------------------------------------------------------- keys
def add_keys(sub) -> None:
    s = sub.add_parser("keys", help="CurveZMQ key pairs for the policy and robot servers")
    ksub = s.add_subparsers(dest="keys_command", metavar="action")
    g = ksub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (secret) in zmq's format")
    g.add_argument("--out", default="keys", help="directory")
    g.add_argument("--name", required=True, help="e.g. robot-server, policy-server, workstation")
    g.set_defaults(func=_cmd_keys_generate)
    s.set_defaults(func=lambda args: (s.print_help(), 2)[1])


def _cmd_keys_generate(args) -> int:
    from robot_bridge.security import generate_keypair

    pub, sec = generate_keypair(args.out, args.name)
    print(json.dumps({"public": pub, "secret": sec}))
    print("give the .key file to peers (clients: the server's; servers' --authorized-keys: the clients'); "
          "keep the .key_secret on this machine")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`vla-robot`: the robot-side commands without the rest of the stack (pip install ./robot_bridge)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="vla-robot", description="vla-stack robot side: robot server, control loop "
                                                             "client, CurveZMQ keys")
    sub = p.add_subparsers(dest="command", metavar="command")
    add_robot_server(sub)
    add_run(sub)
    add_keys(sub)
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"vla-robot {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
