"""Cameras deliver the shared image schema: uint8 (H, W, 3), upright, RGB."""

from __future__ import annotations

import numpy as np
import pytest

from robot_bridge.cameras import CameraError, OpenCVCamera, SimCamera, make_camera


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A real video file (MJPG): top half red, bottom half blue, as a camera would see an upright scene."""
    import cv2

    path = str(tmp_path_factory.mktemp("cam") / "clip.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30, (80, 60))
    frame = np.zeros((60, 80, 3), np.uint8)
    frame[:30] = (0, 0, 255)  # BGR red
    frame[30:] = (255, 0, 0)  # BGR blue
    for _ in range(10):
        w.write(frame)
    w.release()
    return path


def test_opencv_camera_is_rgb_upright_and_resized(video):
    cam = OpenCVCamera(video, size=(32, 48))
    cam.start()
    try:
        im = cam.read()
        assert im.dtype == np.uint8 and im.shape == (32, 48, 3) and cam.shape == (32, 48, 3)
        top, bottom = im[:12].reshape(-1, 3).mean(0), im[-12:].reshape(-1, 3).mean(0)
        assert top[0] > 200 and top[2] < 60  # red on top, in RGB order
        assert bottom[2] > 200 and bottom[0] < 60
    finally:
        cam.stop()
    flipped = OpenCVCamera(video, rotate=180)  # a camera mounted upside down
    flipped.start()
    try:
        im = flipped.read()
        assert im.shape == (60, 80, 3) and im[:20].reshape(-1, 3).mean(0)[2] > 200  # blue now on top
    finally:
        flipped.stop()


def test_opencv_camera_errors_name_the_source(tmp_path):
    with pytest.raises(CameraError, match="could not open"):
        OpenCVCamera(str(tmp_path / "missing.avi")).start()
    with pytest.raises(ValueError, match="rotate"):
        OpenCVCamera(0, rotate=45)


def test_sim_camera_follows_the_joints_and_is_upright():
    pytest.importorskip("franky_sim", reason="the fr3 scene ships with franky-sim (the `test` extra)")
    q = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785, 0.04, 0.04])
    cam = SimCamera("fr3-front", size=(48, 64), qpos_source=lambda: q)
    cam.start()
    try:
        a = cam.read()
        assert a.dtype == np.uint8 and a.shape == (48, 64, 3)
        assert a[:6].mean() < a[-6:].mean()  # dark sky above, lit floor below: upright
        q[0] = 1.2  # swing the arm about its base
        b = cam.read()
        assert np.abs(a.astype(int) - b).mean() > 1.0 and cam.frames == 2
    finally:
        cam.stop()


def test_make_camera_specs():
    cam = make_camera("usb:2@120x160@r90")
    assert isinstance(cam, OpenCVCamera) and cam.source == "2" and cam.size == (120, 160) and cam.rotate == 90
    assert make_camera("sim:fr3-wrist@64x64").size == (64, 64)
    for bad in ("usb:", "ftp:x", "usb:0@12y4"):
        with pytest.raises(ValueError):
            make_camera(bad)
