"""Arm adapters behind one interface (base.Robot). SDKs are optional extras, imported only when used:

    franka   franky-control (libfranka), tested against franky-sim   pip install 'vla-stack[franka]'
    ur       ur-rtde (servoL / speedL)                          pip install 'vla-stack[ur]'
    xarm     xarm-python-sdk (servo Cartesian mode)             pip install 'vla-stack[xarm]'
    sim      robosuite/MuJoCo task (sim.robot): registered by the full install, absent from the robot-side one

Arms register themselves in the entry-point group `vla_stack.robots` (pyproject.toml, robot_bridge/pyproject.toml):
`name = "module:RobotClass"`, the class naming its config dataclass in `config_class`. Another package adds an arm
the same way, in its own packaging, and `vla robot-server --robot NAME` finds it; this package imports nothing of it.
"""

from __future__ import annotations

import difflib
from importlib.metadata import EntryPoint, entry_points

from robot_bridge.robots.base import (ActionSpec, MissingExtraError, ObservationSpec, Robot, RobotError,  # noqa: F401
                                      RobotStopped)

GROUP = "vla_stack.robots"
# this package's own adapters, also declared as entry points: listed here too so they resolve when the installed
# metadata predates the group (an editable install not yet re-run), which would otherwise hide them
BUILTIN = {"franka": "robot_bridge.robots.franka:FrankaRobot", "ur": "robot_bridge.robots.ur:URRobot",
           "xarm": "robot_bridge.robots.xarm:XArmRobot"}
# arms that the full install (vla-stack) registers and the robot-side distribution does not: name -> (module, extra),
# so that asking for one on a robot PC names what to install instead of calling it unknown
ELSEWHERE = {"sim": ("sim.robot", "sim")}


def registry() -> dict[str, str]:
    """name -> "module:RobotClass" of every arm installed: the built-ins, then the entry points (a plugin cannot take
    a built-in's name)."""
    found = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def available() -> list[str]:
    return sorted(registry())


def robot_class(name: str):
    """name -> (Robot subclass, its config dataclass). Imports the adapter module (not its SDK) lazily."""
    reg = registry()
    if name not in reg:
        if name in ELSEWHERE:
            raise MissingExtraError(name, *ELSEWHERE[name])
        close = difflib.get_close_matches(name, sorted(set(reg) | set(ELSEWHERE)), n=1)
        raise ValueError(f"robot: unknown {name!r}; expected one of {sorted(reg)}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))
    ep = EntryPoint(name=name, value=reg[name], group=GROUP)
    try:
        cls = ep.load()
    except ImportError as e:
        if name in ELSEWHERE:  # registered, but its package is incomplete here
            raise MissingExtraError(name, *ELSEWHERE[name]) from e
        raise
    if not (isinstance(cls, type) and issubclass(cls, Robot) and getattr(cls, "config_class", None)):
        raise TypeError(f"robot {name!r}: the entry point {reg[name]!r} ({GROUP}) must name a Robot subclass that sets "
                        "config_class")
    return cls, cls.config_class
