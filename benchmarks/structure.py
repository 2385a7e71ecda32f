"""The house's structure, measured: import cycles, imports that point up a layer, whether the robot-side package
loads torch, result files that no committed script wrote, and how much of the repository is scaffolding or unexplained:

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

benchmark_lines_over_vla_lines: lines of benchmarks/**/*.py over lines of vla/**/*.py.
uncited_benchmark_scripts: benchmarks/*.py named by no current doc (README.md, docs/*.md but the dated history
  EXPERIMENTS.md), the Makefile, .ci/run or another benchmarks file, not imported by another benchmarks script, and
  writing no results file such a doc names.
unreferenced_recipes: vla/configs/train/*.yaml whose name appears in no doc (EXPERIMENTS.md aside), benchmarks file
  (results included), test, Makefile, code, shipped checkpoint (vla/pretrained/*/*.json) or other recipe.
figures_in_config_comments: comments in vla/configs/**/*.yaml that hold a figure (a number with %, ms, mm, min,
  samples/s or x): figures belong in results files and docs.
duplicate_runners: episode loops written twice (RUNNERS below: each that steps its own loop counts; one is the runner).
lint_errors: ruff's findings over the Python packages, benchmarks and tests (pyproject.toml [tool.ruff]); null when
  ruff is not installed.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys

from common import ROOT, write_json

PACKAGES = ("vla", "sim", "robot_bridge")
RANK = {"robot": 0, "vla": 0, "serving": 1, "sim": 2, "app": 3}
ALLOWED = {"robot": {"robot"}, "vla": {"vla"}, "serving": {"serving", "robot"},
           "sim": {"sim", "vla", "robot", "serving"}, "app": {"app", "sim", "vla", "robot", "serving"}}
# keys typed into result files by hand in earlier sessions (issue 27): counted until a script rewrites the file
HAND_TYPED = {"dvla.json": ("multitask_release", "multitask_can15", "multitask_can15_ordered", "multitask_avg_note",
                            "stackcolor_alone_2400", "multitask", "multitask_target2", "multitask_avg",
                            "multitask_avg_run")}
# files assembled or collated by hand from several runs (issue 27), by the key that marks the collated shape: counted
# while a file of that name still has it (a rerun of its script writes one run, without the key)
HAND_ASSEMBLED = {"stack_release.json": "runs", "robot_sim.json": "rows"}
# the docs that cite current scripts and figures (EXPERIMENTS.md, the dated history, names old scripts too)
CITING = ("README.md", "docs/*.md", "Makefile", ".ci/run")
HISTORY = ("docs/EXPERIMENTS.md",)
# episode loops that exist twice: module -> function ("Class.method" for a method); each that still steps a loop of
# its own counts, and one of them is the runner
RUNNERS = {"sim.evaluate": "rollout", "robot_bridge.control_loop": "ControlLoop._run_sync"}
FIGURE = re.compile(r"\d+(\.\d+)?\s*(%|ms\b|mm\b|min\b|minutes|samples/s|x\b)")
LINTED = ("vla", "sim", "robot_bridge", "benchmarks", "tests")
SKIP_DIRS = ("build", "__pycache__")


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
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                  == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):  # an import by name is an import
                names = [node.args[0].value]
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


def _files(patterns, root: str = ROOT) -> list[str]:
    """Paths (relative to the repository) matching the glob patterns, ** included, each once, sorted."""
    out = set()
    for pat in patterns:
        for p in glob.glob(os.path.join(root, pat), recursive=True):
            parts = os.path.relpath(p, root).split(os.sep)
            if os.path.isfile(p) and not any(d in SKIP_DIRS or d.endswith(".egg-info") for d in parts[:-1]):
                out.add(os.path.relpath(p, root))
    return sorted(out)


def _read(rel: str) -> str:
    try:
        with open(os.path.join(ROOT, rel), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _lines(folder: str) -> int:
    return sum(_read(p).count("\n") for p in _files([f"{folder}/**/*.py"]))


def _cites(name: str, folder: str) -> re.Pattern:
    """`name` as a file name: alone, or after `folder/`, not as the tail of another path or name."""
    return re.compile(rf"(?:(?<={re.escape(folder)}/)|(?<![\w./-])){re.escape(name)}(?![\w-])")


def _results_by_script() -> dict[str, list[str]]:
    """benchmarks/X.py -> the results files (benchmarks/results/*.json[l]) whose command runs it."""
    out: dict[str, list[str]] = {}
    for rel in _files(["benchmarks/results/*.json", "benchmarks/results/*.jsonl"]):
        try:
            with open(os.path.join(ROOT, rel)) as f:
                first = json.loads(f.readline()) if rel.endswith(".jsonl") else json.load(f)
        except (json.JSONDecodeError, OSError):
            continue
        cmd = first.get("command") if isinstance(first, dict) else None
        for w in str(cmd or "").split():
            if w.endswith(".py") and w.startswith("benchmarks/"):
                out.setdefault(w, []).append(os.path.basename(rel))
    return out


def uncited_scripts() -> list[str]:
    docs = {p: _read(p) for p in _files(CITING) if p not in HISTORY}
    bench = {p: _read(p) for p in _files(["benchmarks/**/*.py", "benchmarks/**/*.sh"])}
    imported = set()
    for p, text in bench.items():
        if p.endswith(".py"):
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Import):
                    imported |= {(p, a.name.split(".")[0]) for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add((p, node.module.split(".")[0]))
    writes = _results_by_script()
    out = []
    for script in _files(["benchmarks/*.py"]):
        name, stem = os.path.basename(script), os.path.basename(script)[:-3]
        pat = _cites(name, "benchmarks")
        if any(pat.search(t) for t in docs.values()) or any(pat.search(t) for p, t in bench.items() if p != script):
            continue
        if any(mod == stem and p != script for p, mod in imported):
            continue
        if any(_cites(r, "results").search(t) for r in writes.get(script, ()) for t in docs.values()):
            continue
        out.append(script)
    return out


def unreferenced_recipes() -> list[str]:
    recipes = _files(["vla/configs/train/*.yaml"])
    texts = {p: _read(p) for p in _files(["README.md", "docs/**/*.md", "Makefile", ".ci/run", "tests/**/*.py",
                                          "benchmarks/**/*.py", "benchmarks/**/*.sh", "vla/**/*.py", "sim/**/*.py",
                                          "robot_bridge/**/*.py", "vla/pretrained/*/*.json"])}
    texts.update({p: _read(p) for p in _files(["benchmarks/results/*.json", "benchmarks/results/*.jsonl"])
                  if os.path.getsize(os.path.join(ROOT, p)) < 5_000_000})
    texts.update({p: _read(p) for p in recipes})
    for p in HISTORY:
        texts.pop(p, None)
    out = []
    for r in recipes:
        pat = re.compile(rf"(?<![\w-]){re.escape(os.path.basename(r)[:-5])}(?![\w-])")
        if not any(pat.search(t) for p, t in texts.items() if p != r):
            out.append(r)
    return out


def config_comment_figures() -> list[str]:
    out = []
    for rel in _files(["vla/configs/**/*.yaml"]):
        for i, line in enumerate(_read(rel).splitlines(), 1):
            m = re.search(r"(?:^|\s)#(.*)$", line)
            if m and FIGURE.search(m.group(1)):
                out.append(f"{rel}:{i}: {line.strip()[:100]}")
    return out


def runner_loops() -> list[str]:
    """The RUNNERS that step a loop of their own (a for/while calling .step, _apply or send_action)."""
    mods = modules()
    out = []
    for mod, qual in RUNNERS.items():
        if mod not in mods:
            continue
        node: ast.AST = ast.parse(_read(os.path.relpath(mods[mod], ROOT)))
        for part in qual.split("."):
            node = next((n for n in getattr(node, "body", []) if isinstance(n, (ast.ClassDef, ast.FunctionDef))
                         and n.name == part), None)
            if node is None:
                break
        if node is None:
            continue
        steps = any(isinstance(loop, (ast.For, ast.While)) and any(
            isinstance(c, ast.Call) and getattr(c.func, "attr", None) in ("step", "_apply", "send_action")
            for c in ast.walk(loop)) for loop in ast.walk(node))
        if steps:
            out.append(f"{mod}.{qual}")
    return out


def lint() -> tuple[int | None, dict[str, int]]:
    """ruff's findings (count, and count per rule); (None, {}) without ruff."""
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    ruff = ruff if os.path.exists(ruff) else shutil.which("ruff")
    if not ruff:
        return None, {}
    res = subprocess.run([ruff, "check", "--output-format", "json", "--exit-zero", *LINTED], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    found = json.loads(res.stdout or "[]")
    per_rule: dict[str, int] = {}
    for f in found:
        per_rule[f.get("code") or "syntax"] = per_rule.get(f.get("code") or "syntax", 0) + 1
    return len(found), dict(sorted(per_rule.items(), key=lambda kv: -kv[1]))


def main() -> int:
    mods = modules()
    g = graph(mods)
    up = sorted(f"{a} -> {b}" for a, bs in g.items() for b in bs if layer(b) not in ALLOWED[layer(a)])
    cyc = cycles(g)
    loads = robot_package_loads()
    hw = hand_written()
    bench_lines, vla_lines = _lines("benchmarks"), _lines("vla")
    uncited, recipes = uncited_scripts(), unreferenced_recipes()
    figures, runners = config_comment_figures(), runner_loops()
    n_lint, lint_rules = lint()
    result = {"import_cycles": len(cyc), "upward_imports": len(up),
              "robot_pkg_imports_torch": "torch" in loads, "hand_written_results": len(hw),
              "benchmark_lines_over_vla_lines": round(bench_lines / max(vla_lines, 1), 3),
              "uncited_benchmark_scripts": len(uncited), "unreferenced_recipes": len(recipes),
              "figures_in_config_comments": len(figures), "duplicate_runners": max(len(runners) - 1, 0),
              "lint_errors": n_lint,
              "command": "python benchmarks/structure.py",
              "details": {"cycles": cyc, "upward": up, "robot_pkg_loads": loads, "hand_written": hw,
                          "modules": len(mods), "edges": sum(len(v) for v in g.values()),
                          "benchmark_lines": bench_lines, "vla_lines": vla_lines, "uncited_benchmark_scripts": uncited,
                          "unreferenced_recipes": recipes, "figures_in_config_comments": figures,
                          "runner_loops": runners, "lint_per_rule": lint_rules}}
    write_json(os.path.join(ROOT, "benchmarks", "results", "structure.json"), result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
