"""Cameras on the robot side. Every camera returns the shared image schema: uint8 (H, W, 3), upright, RGB.

    cam = OpenCVCamera(0, size=(224, 224), rotate=180)    # a USB camera mounted upside down
    cam = SimCamera("fr3-front", size=(128, 128))         # MuJoCo render of the FR3 model, posed from the arm's joints
    cam.start(); frame = cam.read(); cam.stop()

    make_camera("usb:0@224x224"), make_camera("file:demo.avi"), make_camera("sim:fr3-wrist@128x128")

cv2 and mujoco are imported lazily: a robot computer without cameras needs neither.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

log = logging.getLogger("robot_bridge.cameras")
os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering for SimCamera; must precede mujoco's first import


class CameraError(RuntimeError):
    pass


class Camera(Protocol):
    shape: tuple[int, int, int]  # (H, W, 3)

    def start(self) -> None: ...

    def read(self) -> np.ndarray: ...  # uint8 (H, W, 3) upright RGB, the latest frame

    def stop(self) -> None: ...


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (int(s) for s in size)
    if not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise ValueError(f"size: expected (height, width) in 8..4096 pixels, got {size}")
    return h, w


# ------------------------------------------------------------------------------------------------------ OpenCV
class OpenCVCamera:
    """A USB camera (device index or /dev/videoN), a video file or a stream URL through cv2.VideoCapture.

    A background thread keeps grabbing, so read() returns the newest frame without waiting for the sensor.
    rotate: degrees clockwise (0, 90, 180, 270) that make the mounted camera's image upright.
    Files are played at their own frame rate and loop (tests, replays).
    """

    def __init__(self, source: int | str = 0, size: tuple[int, int] | None = None, rotate: int = 0,
                 fps: float | None = None, first_frame_timeout_s: float = 5.0):
        if rotate not in (0, 90, 180, 270):
            raise ValueError(f"rotate: expected 0, 90, 180 or 270 degrees, got {rotate}")
        self.source = source
        self.size = _check_size(size)
        self.rotate = rotate
        self.fps = fps
        self.first_frame_timeout_s = first_frame_timeout_s
        self.shape: tuple[int, int, int] | None = (*self.size, 3) if self.size else None
        self.frames = 0
        self._cap = None
        self._frame: np.ndarray | None = None
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._is_file = isinstance(source, str) and os.path.isfile(source)

    def start(self) -> None:
        try:
            import cv2
        except ImportError as e:
            raise ImportError("OpenCVCamera needs OpenCV: pip install 'vla-stack[camera]'") from e
        self._cv2 = cv2
        src = int(source) if isinstance(source := self.source, str) and source.isdigit() else source
        cap = cv2.VideoCapture(src)
        if not cap.isOpened():
            raise CameraError(f"camera source {self.source!r}: cv2.VideoCapture could not open it")
        if self.fps and not self._is_file:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap
        self._period = 1.0 / (self.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0) if self._is_file else 0.0
        self._stop.clear()
        self._thread = threading.Thread(target=self._grab, name=f"camera-{self.source}", daemon=True)
        self._thread.start()
        with self._cv:
            if not self._cv.wait_for(lambda: self._frame is not None, self.first_frame_timeout_s):
                self.stop()
                raise CameraError(f"camera source {self.source!r}: no frame within {self.first_frame_timeout_s} s")
            self.shape = self._frame.shape

    def _convert(self, bgr: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if self.rotate:
            rgb = cv2.rotate(rgb, {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180,
                                   270: cv2.ROTATE_90_COUNTERCLOCKWISE}[self.rotate])
        if self.size is not None and rgb.shape[:2] != self.size:
            rgb = cv2.resize(rgb, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(rgb, dtype=np.uint8)

    def _grab(self) -> None:
        cap, cv2 = self._cap, self._cv2
        failures = 0
        while not self._stop.is_set():
            t0 = time.perf_counter()
            ok, bgr = cap.read()
            if not ok:
                if self._is_file:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # loop
                    failures += 1
                    if failures > 3:
                        break
                    continue
                failures += 1
                if failures % 30 == 1:
                    log.warning("camera %r: read failed (%d in a row)", self.source, failures)
                time.sleep(0.01)
                continue
            failures = 0
            frame = self._convert(bgr)
            with self._cv:
                self._frame = frame
                self.frames += 1
                self._cv.notify_all()
            if self._period:
                time.sleep(max(0.0, self._period - (time.perf_counter() - t0)))

    def read(self) -> np.ndarray:
        with self._cv:
            if self._frame is None:
                raise CameraError(f"camera source {self.source!r}: not started or no frame yet")
            return self._frame.copy()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None


# --------------------------------------------------------------------------------------------------------- sim
@dataclass(frozen=True)
class SimView:
    lookat: tuple[float, float, float] = (0.35, 0.0, 0.3)
    distance: float = 1.3
    azimuth: float = 150.0  # degrees, about +z; 180 would face the robot from in front of it
    elevation: float = -25.0
    track_body: str | None = None  # follow this body (a wrist view)
    geom_groups: tuple[int, ...] = (0, 3)  # MJCF geom groups drawn: 0 floor/default, 2 visual meshes, 3 collision


SIM_SCENES = {
    # name -> (MJCF path resolver, view). The FR3 model ships with franky-sim (the `test`/`franka` extras).
    "fr3-front": ("franky_sim:fr3.xml", SimView()),
    "fr3-wrist": ("franky_sim:fr3.xml", SimView(lookat=(0.0, 0.0, -0.1), distance=0.45, azimuth=180.0,
                                                elevation=-60.0, track_body="hand")),
}


def _resolve_xml(path: str) -> str:
    if path.startswith("franky_sim:"):
        try:
            import franky_sim
        except ImportError as e:
            raise ImportError("the fr3 sim cameras render franky-sim's FR3 model: pip install 'vla-stack[test]'") from e
        return os.path.join(os.path.dirname(franky_sim.__file__), "assets", path.split(":", 1)[1])
    return path


def _scene_xml(path: str) -> str:
    """The MJCF at `path` with mesh paths made absolute, plus a floor and a light (models of a bare arm have
    neither). franky-sim's fr3.xml names meshdir="assets" although its meshes live in assets/meshes."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    here = os.path.dirname(os.path.abspath(path))
    comp = root.find("compiler")
    if comp is None:
        comp = ET.SubElement(root, "compiler")
    mesh_dir = os.path.join(here, comp.get("meshdir", ""))
    if not os.path.isdir(mesh_dir) or (os.path.isdir(os.path.join(mesh_dir, "meshes"))):
        mesh_dir = os.path.join(mesh_dir if os.path.isdir(mesh_dir) else here, "meshes")
    comp.set("meshdir", mesh_dir)
    world = root.find("worldbody")
    if world is not None:
        ET.SubElement(world, "geom", name="_floor", type="plane", size="2 2 0.1", rgba="0.35 0.45 0.55 1")
        ET.SubElement(world, "light", name="_light", pos="1 -1 2.5", dir="-0.4 0.4 -1", directional="true")
    return ET.tostring(root, encoding="unicode")


class SimCamera:
    """Renders a MuJoCo model with mujoco.Renderer (upright RGB). By default it draws the collision geometry: the
    FR3's visual meshes cost far more to rasterize in software, and the collision shapes show the arm's pose.

    The model's joints are posed each frame from `qpos_source()` (a callable returning joint positions, first model
    joints first) or, once attached to a robot with `joint_positions()`, from the arm's measured joints: a camera
    that shows the real (sim) arm. All GL work happens on the camera's own thread (a GL context belongs to one
    thread; creating, using and freeing it elsewhere crashes): read() hands it a pose and waits for the frame.
    """

    def __init__(self, scene: str = "fr3-front", size: tuple[int, int] = (128, 128), xml: str | None = None,
                 view: SimView | None = None, qpos_source: Callable[[], np.ndarray] | None = None,
                 timeout_s: float = 5.0):
        if xml is None:
            if scene not in SIM_SCENES:
                raise ValueError(f"scene: unknown {scene!r}; expected one of {sorted(SIM_SCENES)} or xml=path")
            xml, default_view = SIM_SCENES[scene]
            view = view or default_view
        self.scene = scene
        self.xml = _resolve_xml(xml)
        self.view = view or SimView()
        self.size = _check_size(size)
        self.shape = (*self.size, 3)
        self.qpos_source = qpos_source
        self.timeout_s = timeout_s
        self.frames = 0
        self._cv = threading.Condition()
        self._request: np.ndarray | None = None  # the pose to render (qpos), or an empty array: no pose
        self._result: np.ndarray | BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._read_lock = threading.Lock()  # one read at a time: each waits for its own frame

    def attach(self, robot) -> None:
        if self.qpos_source is None and hasattr(robot, "joint_positions"):
            self.qpos_source = robot.joint_positions

    def start(self) -> None:
        if not os.path.isfile(self.xml):
            raise CameraError(f"sim camera {self.scene!r}: model file {self.xml} not found")
        if self._thread is not None:
            return
        self._closing = False
        ready: list = []
        self._thread = threading.Thread(target=self._run, args=(ready,), name=f"sim-camera-{self.scene}", daemon=True)
        self._thread.start()
        with self._cv:
            self._cv.wait_for(lambda: ready, self.timeout_s * 4)
        if not ready or isinstance(ready[0], BaseException):
            self.stop()
            raise CameraError(f"sim camera {self.scene!r}: could not start ({ready[0] if ready else 'timeout'})")

    def _setup(self):
        import mujoco

        model = mujoco.MjModel.from_xml_string(_scene_xml(self.xml))
        # MSAA, shadows and reflections dominate the cost of a software (llvmpipe) render: off
        model.vis.quality.offsamples = 0
        model.vis.global_.offheight, model.vis.global_.offwidth = self.size
        data = mujoco.MjData(model)
        cam = mujoco.MjvCamera()
        v = self.view
        cam.lookat[:] = v.lookat
        cam.distance, cam.azimuth, cam.elevation = v.distance, v.azimuth, v.elevation
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        body = -1
        if v.track_body:
            body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, v.track_body)
            if body < 0:
                raise CameraError(f"sim camera {self.scene!r}: no body {v.track_body!r} in {self.xml}")
        opt = mujoco.MjvOption()
        opt.geomgroup[:] = 0
        for g in v.geom_groups:
            opt.geomgroup[g] = 1
        renderer = mujoco.Renderer(model, self.size[0], self.size[1])
        return model, data, cam, body, opt, renderer

    def _run(self, ready: list) -> None:
        import mujoco

        try:
            model, data, cam, body, opt, renderer = self._setup()
        except BaseException as e:  # noqa: BLE001 - reported by start()
            with self._cv:
                ready.append(e)
                self._cv.notify_all()
            return
        with self._cv:
            ready.append(True)
            self._cv.notify_all()
        try:
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._request is not None or self._closing)
                    if self._closing:
                        return
                    q, self._request = self._request, None
                try:
                    n = min(len(q), model.nq)
                    data.qpos[:n] = q[:n]
                    mujoco.mj_forward(model, data)
                    if body >= 0:  # a wrist view: follow the body, keep the offset
                        cam.lookat[:] = data.xpos[body] + np.asarray(self.view.lookat)
                    renderer.update_scene(data, camera=cam, scene_option=opt)
                    for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
                        renderer.scene.flags[flag] = 0
                    out = np.ascontiguousarray(renderer.render(), dtype=np.uint8)  # (H, W, 3), upright
                except BaseException as e:  # noqa: BLE001 - handed to the reader
                    out = e
                with self._cv:
                    self._result = out
                    self._cv.notify_all()
        finally:
            renderer.close()

    def read(self) -> np.ndarray:
        if self._thread is None:
            raise CameraError(f"sim camera {self.scene!r}: read() before start()")
        q = np.zeros(0) if self.qpos_source is None else np.asarray(self.qpos_source(), np.float64).ravel()
        with self._read_lock, self._cv:
            self._result = None
            self._request = q
            self._cv.notify_all()
            if not self._cv.wait_for(lambda: self._result is not None, self.timeout_s):
                raise CameraError(f"sim camera {self.scene!r}: no frame within {self.timeout_s} s")
            out, self._result = self._result, None
        if isinstance(out, BaseException):
            raise CameraError(f"sim camera {self.scene!r}: render failed ({type(out).__name__}: {out})")
        self.frames += 1
        return out

    def stop(self) -> None:
        if self._thread is None:
            return
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(self.timeout_s)
        self._thread = None


# ----------------------------------------------------------------------------------------------------- factory
def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = text.lower().split("x")
        return _check_size((int(h), int(w)))
    except ValueError as e:
        raise ValueError(f"camera size {text!r}: expected HEIGHTxWIDTH, e.g. 224x224") from e


def make_camera(spec: str):
    """"usb:0", "usb:/dev/video2", "file:clip.avi", "sim:fr3-front", each optionally "@HxW" (and "usb:...@HxW@r180")."""
    parts = spec.split("@")
    kind, _, src = parts[0].partition(":")
    size, rotate = None, 0
    for p in parts[1:]:
        if p.startswith("r") and p[1:].isdigit():
            rotate = int(p[1:])
        else:
            size = parse_size(p)
    if kind in ("usb", "file", "url"):
        if not src:
            raise ValueError(f"camera {spec!r}: expected {kind}:SOURCE")
        return OpenCVCamera(src, size=size, rotate=rotate)
    if kind == "sim":
        return SimCamera(src or "fr3-front", size=size or (128, 128))
    raise ValueError(f"camera {spec!r}: unknown kind {kind!r}; expected usb:, file:, url: or sim:")
