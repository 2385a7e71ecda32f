"""`vla robot-server`, `vla run`, `vla keys generate`: the robot-side package's command line. Registered into `vla` by
vla/cli/commands.py; installed alone (robot_bridge/pyproject.toml) as `vla-robot` with the same subcommands."""

from __future__ import annotations

import argparse
import copy
import json
import os


class DefaultsFormatter(argparse.HelpFormatter):
    """--help shows each option's default, unless its help text already speaks of it or there is none to show."""

    @staticmethod
    def _shows_default(action) -> bool:
        d, text = action.default, action.help or ""
        return bool(action.option_strings) and not (d is None or d is False or d is argparse.SUPPRESS
                                                     or (isinstance(d, (list, str)) and not d) or "default" in text)

    def _format_action(self, action):
        if not (action.help or "").strip() and self._shows_default(action):  # argparse prints no help line at all
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = (action.help or "").strip()
        if not self._shows_default(action):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """The `vla` / `vla-robot` parsers (subcommands included): every --help lists the defaults."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kw)


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
    s.add_argument("--robot", required=True,
                   help="sim | franka | ur | xarm, or an arm another package registers (entry points vla_stack.robots)")
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
    g.add_argument("--observer-keys", help="CurveZMQ: client .key file or directory that may only read state / e-stop")
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


def safety_line(cfg) -> str:
    """SafetyConfig -> one readable line for the start-up banner."""
    box = ("no workspace box" if cfg.workspace_low is None else
           "workspace box " + "..".join("(" + ", ".join(f"{v:g}" for v in c) + ")"
                                        for c in (cfg.workspace_low, cfg.workspace_high)) + " m")
    return (f"{box}; per command at most {cfg.max_step_translation_m:.3g} m and {cfg.max_step_rotation_rad:.3g} rad; "
            f"gripper {cfg.gripper_low:g}..{cfg.gripper_high:g}")


def start_error(e: BaseException, endpoints: dict, what: str = "the server") -> str:
    """A server's start-up failure as one line naming what failed: a port in use (which one, and the flag that moves
    it) or the robot / policy that could not be set up."""
    cause = e.__cause__ or e.__context__ or e
    text = str(cause)
    try:
        import zmq

        in_use = isinstance(cause, zmq.ZMQError) and cause.errno == zmq.EADDRINUSE
    except ImportError:
        in_use = False
    if in_use or "Address already in use" in text:
        busy = [(flag, addr) for flag, addr in endpoints.items() if addr and f"'{addr}'" in text] or \
            [(flag, addr) for flag, addr in endpoints.items() if addr and addr in text]
        flag, addr = busy[0] if busy else next(iter(endpoints.items()))
        return (f"{addr} is already in use ({flag}; another server running there?); stop it or choose another port "
                f"with {flag}")
    if cause is e:
        return text
    detail = text if isinstance(cause, (ValueError, RuntimeError)) else f"{type(cause).__name__}: {text}"
    return f"{what} failed: {detail}"


class _QuietSteppedWatchdog:
    """A simulator (stepped clock) stands still between commands, and a sync `vla run` waits for each chunk: the robot
    server's watchdog hold is routine there, so its message is shown only with --verbose (as DEBUG)."""

    def __init__(self, verbose: bool):
        self.verbose = verbose

    def filter(self, record) -> bool:
        if record.getMessage().startswith("watchdog:"):
            record.levelno, record.levelname = 10, "DEBUG"
            return self.verbose
        return True


def _cmd_robot_server(args) -> int:
    import logging
    import sys

    from robot_bridge.robot_server import RobotServer, RobotServerConfig

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = RobotServerConfig(bind=args.bind, state_bind=args.state_bind, rate_hz=args.rate,
                            watchdog_ms=args.watchdog_ms, max_command_age_ms=args.max_age_ms,
                            server_secret_key=args.server_key, authorized_keys=args.authorized_keys,
                            observer_keys=args.observer_keys, insecure=args.insecure)
    robot = build_robot(args)
    if getattr(robot, "clock", "realtime") == "stepped":
        logging.getLogger("robot_bridge.robot_server").addFilter(_QuietSteppedWatchdog(args.verbose))
    server = RobotServer(robot, cfg)
    # a server that never started has nothing to report when it stops: the error line below says what happened
    started: list = []
    logging.getLogger("robot_bridge.robot_server").addFilter(
        lambda r: bool(started) or not r.getMessage().startswith("robot server stopped"))
    endpoints = {"--bind": cfg.bind, "--state-bind": cfg.resolved_state_bind()}
    try:
        server.serve_forever(on_start=lambda srv: started.append(print(
            f"[vla robot-server] {robot.name} on {srv.address} (state {srv.state_address}); watchdog "
            f"{cfg.watchdog_ms:.0f} ms; safety: {safety_line(robot.safety.config)}; Ctrl-C to stop", flush=True)))
    except RuntimeError as e:  # the start failed: a port in use, or the robot did not connect
        why = start_error(e, endpoints, f"connecting the {robot.name} robot")
        print(f"vla robot-server: error: could not start: {why}", file=sys.stderr, flush=True)
        return 2
    return 0


# ---------------------------------------------------------------------------------------------------------- run
def add_run(sub) -> None:
    s = sub.add_parser("run", help="drive a robot server with a policy server through the control loop")
    s.add_argument("--policy-server", required=True, help="tcp://HOST:PORT of `vla serve`")
    s.add_argument("--robot-server", required=True, help="tcp://HOST:PORT of `vla robot-server`")
    s.add_argument("--instruction", help="the task (default: the robot's own, e.g. a sim task's)")
    s.add_argument("--mode", choices=["auto", "sync", "async"], default="auto",
                   help="sync: the arm waits for every chunk (simulators; chunks of 8); async: fixed rate, chunks "
                        "requested ahead (README, 'When a chunk arrives late'); auto: sync for a simulator, else async "
                        f"when the chunk is longer than {SYNC_MAX_CHUNK} steps and at least twice the measured delay, "
                        "else sync (one line says which)")
    s.add_argument("--rate", type=float, default=20.0, help="control rate (Hz), async mode")
    s.add_argument("--blend", choices=["auto", "none", "linear", "ensemble", "inpaint"], default="auto",
                   help="async mode: how a late chunk takes over (README, 'When a chunk arrives late'): auto = "
                        "inpaint (real-time chunking) when the policy server takes a prefix, else none")
    s.add_argument("--ensemble-coeff", type=float, default=0.01, help="--blend ensemble: weights exp(-COEFF * i)")
    s.add_argument("--steps", type=int, default=200, help="actions per episode")
    s.add_argument("--episodes", type=int, default=1)
    s.add_argument("--seed", type=int, help="first episode's seed (simulators)")
    s.add_argument("--replan-every", type=int, help="sync mode: actions used per chunk (default: the policy's)")
    s.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for a server: each handshake, each sync request, and (async) a policy "
                        "server that sends no chunk, after which the run ends with exit 3")
    s.add_argument("--first-chunk-timeout", type=float, default=10.0,
                   help="async: seconds to wait for the first episode's first chunk (model warm-up) before the clock "
                        "starts")
    s.add_argument("--starvation-hold", type=float, default=0.0,
                   help="async: seconds of hold actions on an empty queue before the loop stops commanding (the robot "
                        "server's watchdog then holds the arm); 0: stop at once")
    s.add_argument("--policy-lost", type=float, default=1.0,
                   help="async: an empty queue this long is reported as a policy-server outage (retried until "
                        "--timeout)")
    s.add_argument("--client-key", help="CurveZMQ: this client's .key_secret")
    s.add_argument("--policy-server-key", help="CurveZMQ: the policy server's public .key")
    s.add_argument("--robot-server-key", help="CurveZMQ: the robot server's public .key")
    s.add_argument("--out", help="folder for episodes.json (one log per episode) and summary.json; a path ending in "
                                 ".json is written as that one file")
    s.add_argument("--json", action="store_true", help="one JSON line per episode on stdout instead of a sentence")
    s.set_defaults(func=_cmd_run)


SYNC_MAX_CHUNK = 8  # chunks this short leave too few fresh actions per round trip for async to beat sync (README)


def choose_mode(meta: dict, robot, policy, rate_hz: float) -> tuple[str, str]:
    """--mode auto: ("sync" | "async", why). A stepped clock (a simulator) runs sync; otherwise the delay of a request
    (observation + round trip, the slowest of two after a warm-up) decides: async when the chunk is longer than
    SYNC_MAX_CHUNK steps and at least twice the delay in control steps (README, 'When a chunk arrives late')."""
    import math
    import time

    H = int(meta["chunk_size"])
    if robot.meta.get("clock") == "stepped":
        return "sync", "the robot server is a simulator (stepped clock), where sync runs as in-process evaluation does"
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        policy.infer(robot.get_observation())
        times.append(time.perf_counter() - t0)
    delay = max(1, math.ceil(max(times[1:]) * rate_hz))
    why = f"chunks of {H} steps, a request takes {max(times[1:]) * 1e3:.0f} ms = {delay} step(s) at {rate_hz:g} Hz"
    if H > SYNC_MAX_CHUNK and H >= 2 * delay:
        return "async", why
    return "sync", (f"{why}; async needs chunks longer than {SYNC_MAX_CHUNK} steps and at least twice the delay "
                    f"(--mode async forces it)")


def _delta(before: dict, after: dict) -> dict:
    """Numeric counters that grew between two status replies (this episode's share of the server's totals)."""
    out = {}
    for k, v in after.items():
        b = before.get(k, 0)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(b, (int, float)):
            out[k] = v - b
    return out


def _sentence(i: int, seed, log, st: dict, robot_mode: str, safety: dict, counters: dict) -> str:
    lat = f", chunk p50 {st['latency_ms_p50']:.0f} ms" if st.get("latency_ms_p50") is not None else ""
    starved = f", {st['starvation_events']} starved ticks" if st.get("starvation_events") else ""
    interv = safety.get("intervened", 0)
    return (f"episode {i}{f' (seed {seed})' if seed is not None else ''}: "
            f"{'success' if log.success else 'no success'} after {log.length} steps; {st['chunks']} chunk"
            f"{'' if st['chunks'] == 1 else 's'}{lat}"
            f"{starved}; robot {robot_mode}, {counters.get('applied', 0)} commands applied, "
            f"{interv} changed by the safety layer")


def _write_logs(out: str, logs: list, summary: dict) -> str:
    """--out: a folder (episodes.json + summary.json) or, for a path ending in .json, that one file (the logs)."""
    def dump(path, obj):
        with open(path + ".tmp", "w") as f:  # a temporary name, then renamed: never a truncated log
            json.dump(obj, f, indent=1, default=float)
        os.replace(path + ".tmp", path)

    if out.endswith(".json"):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        dump(out, logs)
        return out
    os.makedirs(out, exist_ok=True)
    dump(os.path.join(out, "episodes.json"), logs)
    dump(os.path.join(out, "summary.json"), summary)
    return out


def _cmd_run(args) -> int:
    """Exit codes: 0 done; 3 the policy server did not answer, or stopped answering (the run ends within --timeout,
    whatever the episode count); 4 the robot server was lost; 5 the policy's action space is not the robot's. Each
    with one line on stderr naming the server and what to do."""
    import dataclasses
    import sys

    from robot_bridge import protocol as P
    from robot_bridge.client import PolicyClient, no_answer, policy_warnings
    from robot_bridge.control_loop import ControlLoop, LoopConfig
    from robot_bridge.robot_client import RemoteRobot, RobotClient, RobotServerLost
    from robot_bridge.robots.base import hold_for

    timeout = float(getattr(args, "timeout", 5.0))
    as_json = bool(getattr(args, "json", False))
    if timeout <= 0:
        raise ValueError(f"--timeout: expected > 0 seconds, got {timeout:g}")

    def fail(code: int, msg: str) -> int:
        print(f"vla run: {msg}", file=sys.stderr, flush=True)
        return code

    def warn(msg: str) -> None:
        print(f"vla run: warning: {msg}", file=sys.stderr, flush=True)

    pkeys = dict(client_secret_key=args.client_key, server_public_key=args.policy_server_key) \
        if args.policy_server_key else {}
    rkeys = dict(client_secret_key=args.client_key, server_public_key=args.robot_server_key) \
        if args.robot_server_key else {}
    policy = PolicyClient(args.policy_server, timeout_ms=timeout * 1e3 / 2, retries=1, **pkeys)
    rclient = RobotClient(args.robot_server, timeout_ms=max(10_000, timeout * 1e3), **rkeys)
    logs, code = [], 0
    try:
        try:
            meta = policy.hello()
        except (TimeoutError, ConnectionError) as e:
            return fail(3, str(no_answer(args.policy_server, e)))
        try:
            rclient.hello(timeout_ms=timeout * 1e3)
            robot = RemoteRobot(rclient, instruction=args.instruction, max_steps=args.steps,
                                on_override=lambda given, own: warn(
                                    f"--instruction {given!r} replaces the robot's own {own!r} (a simulator still "
                                    f"scores its own task); leave --instruction out to use it"))
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
        for w in policy_warnings(meta, instruction=args.instruction or robot.meta.get("instruction")):
            warn(w)
        mode = args.mode
        if mode == "auto":
            try:
                mode, why = choose_mode(meta, robot, policy, args.rate)
            except (TimeoutError, ConnectionError, P.ServerError) as e:
                return fail(3, str(no_answer(args.policy_server, e, "while its delay was measured")))
            except RobotServerLost as e:
                return fail(4, f"{e}; is `vla robot-server` still running there?")
            print(f"vla run: mode {mode}: {why}", file=sys.stderr, flush=True)
        robot.sync = mode == "sync"
        watchdog_ms = float(robot.meta.get("watchdog_ms") or 0)
        if mode == "async" and 0 < watchdog_ms < 2e3 / args.rate:
            warn(f"the robot server's watchdog ({watchdog_ms:.0f} ms) is shorter than two control periods at --rate "
                 f"{args.rate:g} ({2e3 / args.rate:.0f} ms): it will hold the arm between commands; raise its "
                 f"--watchdog-ms or the rate")
        cfg = LoopConfig(mode=mode, rate_hz=args.rate, first_chunk_timeout_s=args.first_chunk_timeout,
                         hold=hold_for(r_space), blend=getattr(args, "blend", "auto"),
                         ensemble_coeff=getattr(args, "ensemble_coeff", 0.01),
                         starvation_hold_s=args.starvation_hold, policy_lost_s=args.policy_lost,
                         give_up_s=max(timeout, args.policy_lost),
                         replan_every=args.replan_every or (int(meta.get("n_action_steps", meta["chunk_size"]))
                                                            if mode == "sync" else None))
        loop = ControlLoop(policy, robot, cfg, action_dim=int(meta["action_dim"]))
        lost = "the robot server's watchdog holds the arm meanwhile"
        try:
            for i in range(args.episodes):
                seed = None if args.seed is None else args.seed + i
                if i == 1 and cfg.mode == "async":  # the server is warm now: a missing first chunk is a lost server
                    loop.config = dataclasses.replace(cfg, first_chunk_timeout_s=min(cfg.first_chunk_timeout_s,
                                                                                     timeout))
                try:
                    before = rclient.status()
                    try:
                        log = loop.run_episode(seed=seed, max_steps=args.steps)
                    except (TimeoutError, ConnectionError) as e:  # sync: a chunk request failed after its retry
                        code = fail(3, f"episode {i}: {no_answer(args.policy_server, e, 'mid-episode')}; {lost}")
                        break
                    except P.ServerError as e:
                        if e.code == P.ErrorCode.SHUTTING_DOWN:
                            code = fail(3, f"episode {i}: {no_answer(args.policy_server, e, 'mid-episode')}; {lost}")
                            break
                        code = fail(3, f"episode {i}: the policy server at {args.policy_server} refused a request "
                                       f"({e}); its log says why")
                        break
                    after = rclient.status()
                except RobotServerLost as e:
                    code = fail(4, f"episode {i}: {e}; stopped (the robot server's watchdog holds the arm if it is "
                                   f"still running); is `vla robot-server` still running there?")
                    break
                except TimeoutError as e:
                    code = fail(4, f"episode {i}: robot server at {args.robot_server} stopped answering ({e}); is "
                                   f"`vla robot-server` still running there?")
                    break
                d = log.to_dict()
                d["robot"] = after
                episode_safety = _delta(before.get("safety") or {}, after.get("safety") or {})
                episode_counters = _delta(before.get("counters") or {}, after.get("counters") or {})
                d["robot_episode"] = {"counters": episode_counters, "safety": episode_safety}
                logs.append(d)
                st = d["stats"]
                robot_mode = after["status"]["mode"]
                if as_json:
                    print(json.dumps({"episode": i, "seed": seed, "success": log.success, "length": log.length,
                                      "mode": cfg.mode, "loop": st, "robot_mode": robot_mode,
                                      "safety": episode_safety, "counters": episode_counters}), flush=True)
                else:
                    print(_sentence(i, seed, log, st, robot_mode, episode_safety, episode_counters), flush=True)
                if st["chunks"] == 0:
                    code = fail(3, f"episode {i}: no action chunk from the policy server at {args.policy_server} "
                                   f"({st['request_failures']} failed requests; last error: {st['last_error']}); the "
                                   f"arm was not commanded; is `vla serve` running there and answering?")
                    break
                if st.get("policy_lost"):
                    code = fail(3, f"episode {i}: {st['policy_outages']} policy-server outage(s), "
                                   f"{st['silent_ticks']} ticks without a command; "
                                   f"{no_answer(args.policy_server, st['last_error'] or 'no chunk', 'mid-episode')}; "
                                   f"{lost}")
                    break
                if st["policy_outages"]:
                    warn(f"episode {i}: {st['policy_outages']} policy-server outage(s) of >= {args.policy_lost:g} s, "
                         f"{st['silent_ticks']} ticks without a command (the watchdog held the arm)")
        finally:
            loop.close()
    finally:
        policy.close()
        rclient.close()
        if logs:
            n_ok = sum(bool(d["success"]) for d in logs)
            summary = {"episodes": len(logs), "successes": n_ok, "success_rate": n_ok / len(logs), "exit_code": code,
                       "policy_server": args.policy_server, "robot_server": args.robot_server}
            where = _write_logs(args.out, logs, summary) if args.out else None
            if not as_json and (len(logs) > 1 or where):
                print(f"{len(logs)} episode(s), {n_ok} successful" + (f"; logs in {where}" if where else ""),
                      flush=True)
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
    import sys

    p = Parser(prog="vla-robot", description="vla-stack robot side: robot server, control loop "
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
