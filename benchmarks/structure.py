"""The house's structure, measured: import cycles, imports that point up a layer, whether the robot-side package
loads torch, and result files that no committed script wrote.

    python benchmarks/structure.py            # writes benchmarks/results/structure.json

Layers (docs/ARCHITECTURE.md), lowest first; a module may import its own layer and the ones below:
  robot    robot_bridge core: protocol, clients, control loop, robot server, adapters, safety (numpy, msgpack, pyzmq)
  vla      the model library: model, tokenizers, decoding, training, datasets, Policy
  serving  robot_bridge.serving: the policy server (any policy behind the protocol)     -> robot
  sim      envs, experts, collection, evaluation, the sim arm                         -> vla, robot, serving
  app      vla.cli: every `vla` subcommand and the demo                               -> everything
Every import counts, also those inside functions (lazy ones point the same way). Cycles are found among modules
(Tarjan's strongly connected components over the same graph).

hand_written_results: files in benchmarks/results/ (JSON/JSONL) with no "command" that names a committed script,
and JSON files whose keys are listed in HAND_TYPED below (typed in by earlier sessions; kept until regenerated).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results_io import write_json  # noqa: E402

PACKAGES = ("vla", "sim", "robot_bridge")
RANK = {"robot": 0, "vla": 0, "serving": 1, "sim": 2, "app": 3}
ALLOWED = {"robot": {"robot"}, "vla": {"vla"}, "serving": {"serving", "robot"}, "sim": {"sim", "vla", "robot", "serving"},
           "app": {"app", "sim", "vla", "robot", "serving"}}
# keys typed into result files by hand in earlier sessions (issue 27): counted until a script rewrites the file
HAND_TYPED = {"dvla.json": ("multitask_release", "multitask_can15", "multitask_can15_ordered", "multitask_avg_note",
                            "stackcolor_alone_2400", "multitask", "multitask_target2", "multitask_avg",
                            "multitask_avg_run")}
# files assembled or collated by hand from several runs (issue 27), by the key that marks the collated shape: counted
# while a file of that name still has it (a rerun of its script writes one run, without the key)
HAND_ASSEMBLED = {"stack_release.json": "runs", "robot_sim.json": "rows"}


def layer(module: str) -> str:
    if module.startswith("robot_bridge.serving") or module in ("robot_bridge.cli",):
        return "serving"
    if module.startswith("robot_bridge"):
        return "robot"
    if module.startswith("vla.cli"):
        return "app"
    if module.startswith("vla"):
        return "vla"
    return "sim"


def modules() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        for dp, dirs, fs in os.walk(os.path.join(ROOT, pkg)):
            dirs[:] = [d for d in dirs if d not in ("build", "__pycache__") and not d.endswith(".egg-info")]
            for f in fs:
                if f.endswith(".py"):
                    path = os.path.join(dp, f)
                    mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[mod[: -len(".__init__")] if mod.endswith(".__init__") else mod] = path
    return out


def graph(mods: dict[str, str]) -> dict[str, set[str]]:
    """module -> project modules it imports (resolved to the longest known module name)."""
    g: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(open(path).read())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                if n.split(".")[0] not in PACKAGES:
                    continue
                parts = n.split(".")
                for k in range(len(parts), 0, -1):
                    cand = ".".join(parts[:k])
                    if cand in mods and cand != mod:
                        if not cand.startswith(mod + "."):  # a package exposing its own submodule is no cycle
                            g[mod].add(cand)
                        break
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = i[0]
        i[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def robot_package_loads(python: str = sys.executable) -> list[str]:
    """Import the robot-side modules in a fresh interpreter; which heavy or upper-layer packages got loaded."""
    code = ("import sys; import robot_bridge.protocol, robot_bridge.client, robot_bridge.control_loop, "
            "robot_bridge.robot_client, robot_bridge.robot_server, robot_bridge.robot_cli, robot_bridge.safety, "
            "robot_bridge.robots.franka, robot_bridge.robots.ur, robot_bridge.robots.xarm, robot_bridge.cameras; "
            "print(' '.join(sorted(m for m in ('torch', 'transformers', 'robosuite', 'mujoco', 'vla', 'sim') "
            "if m in sys.modules)))")
    res = subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return res.stdout.split()


def hand_written() -> list[str]:
    rdir = os.path.join(ROOT, "benchmarks", "results")
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    out = []
    for f in sorted(os.listdir(rdir)):
        p = os.path.join(rdir, f)
        if not os.path.isfile(p) or not f.endswith((".json", ".jsonl")) or f.endswith(".details.json"):
            continue
        try:
            first = json.loads(open(p).readline()) if f.endswith(".jsonl") else json.load(open(p))
        except json.JSONDecodeError:
            out.append(f"{f}: not JSON")
            continue
        cmd = first.get("command") if isinstance(first, dict) else None
        script = next((w for w in str(cmd or "").split() if w.endswith(".py")), None)
        if not cmd:
            out.append(f"{f}: no command")
        elif script and f"{script}" not in tracked:
            out.append(f"{f}: its command's script {script} is not committed")
        if f in HAND_ASSEMBLED and isinstance(first, dict) and HAND_ASSEMBLED[f] in first:
            out.append(f"{f}: assembled by hand from several runs")
        for k in HAND_TYPED.get(f, ()):
            if isinstance(first, dict) and k in first:
                out.append(f"{f}: key {k!r} typed by hand")
    return out


def main() -> int:
    mods = modules()
    g = graph(mods)
    up = sorted(f"{a} -> {b}" for a, bs in g.items() for b in bs if layer(b) not in ALLOWED[layer(a)])
    cyc = cycles(g)
    loads = robot_package_loads()
    hw = hand_written()
    result = {"import_cycles": len(cyc), "upward_imports": len(up),
              "robot_pkg_imports_torch": "torch" in loads, "hand_written_results": len(hw),
              "command": "python benchmarks/structure.py",
              "details": {"cycles": cyc, "upward": up, "robot_pkg_loads": loads, "hand_written": hw,
                          "modules": len(mods), "edges": sum(len(v) for v in g.values())}}
    write_json(os.path.join(ROOT, "benchmarks", "results", "structure.json"), result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
