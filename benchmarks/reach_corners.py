"""Drive franky-sim's arm to every corner of a workspace box (gripper down, from the home pose each time) and record
whether it got there: the check behind the Franka default box in docs/ROBOTS.md.

    python benchmarks/reach_corners.py --box default --box 0.25,-0.45,0.05,0.80,0.45,0.80 \\
        --box 0.30,-0.30,0.05,0.60,0.30,0.55

Writes benchmarks/results/reach_corners.json: per box, per corner: reached (position error <= 5 mm with no
controller error, within 6 s), the error, the final joints, and robot_bridge.reach's verdict for the box. A corner
that leaves the arm where it cannot be homed ends that box's run (recorded); put such boxes last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np

from common import ROOT, command, write_json

from robot_bridge.robots.franka import FrankaRobot
from robot_bridge.robots.franky_sim import FrankySim

HOME = [0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785]


def _home(robot, fr) -> None:
    if robot.is_in_control:
        robot.stop()
        robot.join_motion(timeout=3.0)
    if robot.has_errors:
        robot.recover_from_errors()
    try:
        robot.move(fr.JointMotion(HOME))
    except Exception:  # noqa: BLE001 - a planner error from an odd pose: recover and try once more
        robot.recover_from_errors()
        robot.move(fr.JointMotion(HOME))


def corners(robot, fr, lo, hi, dynamics: float) -> list[dict]:
    out = []
    for c in itertools.product(*zip(lo, hi)):
        try:
            _home(robot, fr)
        except Exception as e:  # noqa: BLE001 - the arm is stuck where the last corner left it
            out.append({"corner": list(c), "reached": False, "error_m": None,
                        "exception": f"could not return home after the previous corner: {type(e).__name__}: {e}"[:200]})
            print(json.dumps(out[-1]), flush=True)
            break
        quat = robot.current_cartesian_state.pose.end_effector_pose.quaternion
        row = {"corner": list(c)}
        try:
            robot.move(fr.CartesianMotion(fr.Affine(list(c), quat), fr.ReferenceType.Absolute), asynchronous=True)
            done = robot.join_motion(timeout=6.0)
            p = np.asarray(robot.current_cartesian_state.pose.end_effector_pose.translation)
            row.update(error_m=float(np.linalg.norm(p - c)), finished=bool(done),
                       joints=np.round(robot.current_joint_state.position, 3).tolist(),
                       controller_error=bool(robot.has_errors))
        except Exception as e:  # noqa: BLE001 - franky's exception types: the corner was not reached
            row.update(error_m=None, finished=False, exception=f"{type(e).__name__}: {e}"[:200])
        row["reached"] = bool(row.get("finished") and not row.get("controller_error") and row["error_m"] is not None
                              and row["error_m"] <= 5e-3)
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--box", action="append", default=[], help="'default' or X0,Y0,Z0,X1,Y1,Z1 (repeat)")
    ap.add_argument("--dynamics", type=float, default=0.3)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "reach_corners.json"))
    args = ap.parse_args()
    import franky as fr

    boxes = []
    for b in args.box or ["default"]:
        if b == "default":
            cfg = FrankaRobot.default_safety()
            boxes.append((b, cfg.workspace_low, cfg.workspace_high))
        else:
            v = [float(x) for x in b.split(",")]
            boxes.append((b, tuple(v[:3]), tuple(v[3:])))
    result = {"arm": "franka (franky-sim FR3)", "dynamics": args.dynamics, "boxes": [],
              "command": command(__file__)}
    with FrankySim("127.0.0.1"):
        robot = fr.Robot("127.0.0.1", realtime_config=fr.RealtimeConfig.Ignore)
        robot.relative_dynamics_factor = args.dynamics
        for name, lo, hi in boxes:
            t0 = time.time()
            rows = corners(robot, fr, lo, hi, args.dynamics)
            result["boxes"].append({"box": name, "low": list(lo), "high": list(hi),
                                    "reach_model_problems": FrankaRobot.reach.problems(lo, hi),
                                    "corners_reached": sum(r["reached"] for r in rows), "corners": rows,
                                    "seconds": time.time() - t0})
    write_json(args.out, result)
    print(json.dumps([{k: b[k] for k in ("box", "corners_reached")} for b in result["boxes"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
