"""Layers point down (docs/ARCHITECTURE.md, "Layers"): each layer imported in a fresh interpreter loads none of the
layers above it, and the static import graph (every import, lazy ones too) has no cycle and no upward arrow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import structure  # noqa: E402  (benchmarks/structure.py: the same check that writes structure.json)

MODULES = structure.modules()


def _layer_modules(name: str) -> list[str]:
    return sorted(m for m in MODULES if structure.layer(m) == name and not m.endswith("__main__"))


def _loaded_after_import(mods: list[str]) -> set[str]:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "print(' '.join(sorted({n.split('.')[0] if not n.startswith(('vla.cli', 'robot_bridge.serving')) "
              "else '.'.join(n.split('.')[:2]) for n in sys.modules})))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    assert res.returncode == 0, res.stderr[-2000:]
    return set(res.stdout.split())


@pytest.mark.parametrize("name,forbidden", [
    ("robot", {"vla", "sim", "torch", "transformers", "robosuite", "mujoco", "robot_bridge.serving", "vla.cli"}),
    ("vla", {"sim", "robot_bridge", "robosuite", "vla.cli"}),
    ("serving", {"vla", "sim", "torch"}),
    ("sim", {"vla.cli"}),
])
def test_each_layer_loads_nothing_above_it(name, forbidden):
    mods = _layer_modules(name)
    assert mods, name
    loaded = _loaded_after_import(mods)
    assert not loaded & forbidden, f"importing the {name} layer loaded {sorted(loaded & forbidden)}"


def test_import_graph_has_no_cycle_and_no_upward_arrow():
    g = structure.graph(MODULES)
    up = [f"{a} -> {b}" for a, bs in g.items() for b in bs
          if structure.layer(b) not in structure.ALLOWED[structure.layer(a)]]
    assert up == [], up
    assert structure.cycles(g) == []


def test_the_checker_sees_an_upward_import_and_a_cycle():
    """The check can fail: a robot module importing vla is upward, two modules importing each other are a cycle."""
    g = {"robot_bridge.client": {"vla.policy"}, "vla.policy": {"vla.model"}, "vla.model": {"vla.policy"}}
    up = [(a, b) for a, bs in g.items() for b in bs if structure.layer(b) not in structure.ALLOWED[structure.layer(a)]]
    assert up == [("robot_bridge.client", "vla.policy")]
    assert structure.cycles(g) == [["vla.model", "vla.policy"]]


def test_the_checker_sees_an_import_by_name(tmp_path):
    """importlib.import_module("sim.robot") in the robot package is an upward import like any other."""
    src = tmp_path / "reach.py"
    src.write_text("import importlib\n\ndef load():\n    return importlib.import_module('sim.robot')\n")
    g = structure.graph({"robot_bridge.reach": str(src), "sim.robot": str(src)})
    assert g["robot_bridge.reach"] == {"sim.robot"}
