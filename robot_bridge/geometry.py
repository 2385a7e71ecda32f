"""Rotations in numpy only (the robot side must not need scipy or torch).

Conventions: quaternions are xyzw (the sim state, franky's Affine); axis-angle vectors are (3,) with the angle as
their norm (a UR rotation vector); roll/pitch/yaw are fixed-axis XYZ: R = Rz(yaw) @ Ry(pitch) @ Rx(roll) (xArm).
"""

from __future__ import annotations

import numpy as np


def quat_normalize(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion: expected a non-zero finite (4,) xyzw, got {q.tolist()}")
    return q / n


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of xyzw quaternions (rotation b first, then a)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])


def quat_conj(q: np.ndarray) -> np.ndarray:
    """The inverse rotation of a unit xyzw quaternion."""
    q = np.asarray(q, dtype=np.float64)
    return np.array([-q[0], -q[1], -q[2], q[3]])


def axis_angle_to_quat(v: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) -> xyzw (4,)."""
    v = np.asarray(v, dtype=np.float64)
    angle = np.linalg.norm(v)
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = v / angle
    return np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """xyzw (4,) -> rotation vector (3,), angle in [0, pi]."""
    q = quat_normalize(q)
    if q[3] < 0:
        q = -q  # the same rotation, the shorter way round
    s = np.linalg.norm(q[:3])
    if s < 1e-12:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(s, q[3])
    return q[:3] / s * angle


def rpy_to_quat(rpy: np.ndarray) -> np.ndarray:
    """Fixed-axis roll (x), pitch (y), yaw (z) in radians -> xyzw."""
    r, p, y = np.asarray(rpy, dtype=np.float64) / 2
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array([
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
        cr * cp * cy + sr * sp * sy,
    ])


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """xyzw (4,) -> rotation matrix (3, 3)."""
    x, y, z, w = quat_normalize(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> xyzw (4,) (Shepperd's method: stable for every rotation)."""
    m = np.asarray(m, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    return quat_normalize(np.array(q))


def quat_angle(a: np.ndarray, b: np.ndarray) -> float:
    """The angle (rad, 0..pi) of the rotation between two xyzw quaternions."""
    d = abs(float(np.dot(quat_normalize(a), quat_normalize(b))))
    return float(2.0 * np.arccos(min(1.0, d)))


def quat_to_rpy(q: np.ndarray) -> np.ndarray:
    """xyzw -> fixed-axis roll, pitch, yaw (radians), pitch in [-pi/2, pi/2]. At pitch +-pi/2 (gimbal lock) only
    yaw -+ roll is defined: roll is set to 0 and yaw carries the whole turn, so rpy_to_quat gives the rotation back."""
    m = quat_to_matrix(q)
    c = float(np.hypot(m[0, 0], m[1, 0]))  # cos(pitch) >= 0
    pitch = float(np.arctan2(-m[2, 0], c))
    if c > 1e-9:
        return np.array([np.arctan2(m[2, 1], m[2, 2]), pitch, np.arctan2(m[1, 0], m[0, 0])])
    # R = Rz(yaw) Ry(+-pi/2) Rx(roll): with roll = 0, m[0, 1] = -sin(yaw) and m[1, 1] = cos(yaw)
    return np.array([0.0, pitch, np.arctan2(-m[0, 1], m[1, 1])])


def dh_forward(q: np.ndarray, dh: tuple[tuple[float, float, float], ...], tool: np.ndarray) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """Forward kinematics by modified (Craig) Denavit-Hartenberg parameters: q (n,) rad, dh n rows of (a_{i-1},
    d_i, alpha_{i-1}), tool (4, 4) the flange -> end effector transform. -> (position (3,) m, quat xyzw (4,))."""
    t = np.eye(4)
    for qi, (a, d, alpha) in zip(np.asarray(q, np.float64), dh):
        ca, sa, ct, st = np.cos(alpha), np.sin(alpha), np.cos(qi), np.sin(qi)
        t = t @ np.array([[ct, -st, 0.0, a], [st * ca, ct * ca, -sa, -d * sa], [st * sa, ct * sa, ca, d * ca],
                          [0.0, 0.0, 0.0, 1.0]])
    t = t @ tool
    return t[:3, 3].copy(), matrix_to_quat(t[:3, :3])


def apply_delta(pos: np.ndarray, quat: np.ndarray, dpos: np.ndarray, drot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pose (pos (3,), quat xyzw (4,)) moved by a base-frame delta: translation dpos (3,), rotation vector drot (3,)
    applied on the left (about base-frame axes through the end effector, as robosuite's OSC_POSE delta input)."""
    new_q = quat_normalize(quat_mul(axis_angle_to_quat(drot), quat))
    return np.asarray(pos, dtype=np.float64) + np.asarray(dpos, dtype=np.float64), new_q
