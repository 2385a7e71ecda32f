"""Is a workspace box one the arm can reach, away from singular poses? A numpy-only check run when an adapter starts.

The model is deliberately simple (no kinematics library on the robot PC): for a gripper pointing down, the wrist
centre sits `wrist_offset_m` above the end effector; every corner of the box, lifted by that offset, must lie within
`usable_fraction` of the arm's reach from its shoulder (a stretched elbow is the singular pose where Cartesian
motions fault), and the box must keep `min_radius_m` away from the base's vertical axis (the shoulder singularity).
How each arm's numbers were chosen, and the corners tried on franky-sim, are in docs/ROBOTS.md.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reach:
    shoulder: tuple[float, float, float]  # m, base frame: the second joint's axis (where the reach is measured from)
    reach_m: float  # the manufacturer's maximum reach
    wrist_offset_m: float  # wrist centre above the end effector (gripper pointing down)
    usable_fraction: float = 0.9  # of reach_m: beyond it the elbow is nearly straight (singular)
    min_radius_m: float = 0.2  # the box keeps this far from the base's vertical axis

    def problems(self, low, high) -> list[str]:
        """What is wrong with the box low (3,)..high (3,), one sentence each; [] when it is fine."""
        lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
        sh = np.asarray(self.shoulder, np.float64)
        limit = self.usable_fraction * self.reach_m
        out = []
        for corner in itertools.product(*zip(lo, hi)):
            c = np.asarray(corner)
            d = float(np.linalg.norm(c + [0.0, 0.0, self.wrist_offset_m] - sh))
            if d > limit:
                out.append(f"corner {np.round(c, 3).tolist()}: its wrist centre is {d:.3f} m from the shoulder, beyond "
                           f"{limit:.3f} m ({self.usable_fraction:.0%} of the {self.reach_m} m reach)")
        nearest = np.clip(0.0, lo[:2], hi[:2])  # the box's closest point to the base axis, in x-y
        r = float(np.linalg.norm(nearest))
        if r < self.min_radius_m:
            out.append(f"the box comes {r:.3f} m from the base's vertical axis (shoulder singularity); keep "
                       f">= {self.min_radius_m} m")
        return out


def check_workspace(robot_name: str, reach: Reach | None, low, high) -> None:
    """Raise ValueError naming each unreachable corner; nothing to check without a box or a reach model."""
    if reach is None or low is None:
        return
    bad = reach.problems(low, high)
    if bad:
        raise ValueError(f"workspace for {robot_name}: {list(low)}..{list(high)} is not safely reachable: "
                         + "; ".join(bad) + ". Choose a smaller box (--workspace) or, with a kinematic check of your "
                         "own, skip this one (--no-reach-check)")
