"""Arm adapters behind one interface (base.Robot). SDKs are optional extras, imported only when used:

    sim      robosuite/MuJoCo task (sim.robot, a plugin from the sim package: the full install, not the robot-side one)
    franka   franky-control (libfranka), tested against franky-sim   pip install 'vla-stack[franka]'
    ur       ur-rtde (servoL / speedL)                          pip install 'vla-stack[ur]'
    xarm     xarm-python-sdk (servo Cartesian mode)             pip install 'vla-stack[xarm]'
"""

from __future__ import annotations

from robot_bridge.robots.base import (ActionSpec, MissingExtraError, ObservationSpec, Robot, RobotError,  # noqa: F401
                                      RobotStopped)

ROBOTS = ("sim", "franka", "ur", "xarm")


def robot_class(name: str):
    """name -> (Robot subclass, its config dataclass). Imports the adapter module (not its SDK) lazily."""
    if name == "sim":  # a plugin: the sim arm lives in the sim package, above this one (absent on a robot PC)
        import importlib

        try:
            mod = importlib.import_module("sim.robot")
        except ImportError as e:
            raise MissingExtraError("sim", "sim.robot", "sim") from e
        return mod.SimRobot, mod.SimConfig
    if name == "franka":
        from robot_bridge.robots.franka import FrankaConfig, FrankaRobot

        return FrankaRobot, FrankaConfig
    if name == "ur":
        from robot_bridge.robots.ur import URConfig, URRobot

        return URRobot, URConfig
    if name == "xarm":
        from robot_bridge.robots.xarm import XArmConfig, XArmRobot

        return XArmRobot, XArmConfig
    import difflib

    close = difflib.get_close_matches(name, ROBOTS, n=1)
    raise ValueError(f"robot: unknown {name!r}; expected one of {list(ROBOTS)}"
                     + (f" (did you mean {close[0]!r}?)" if close else ""))
