"""Run franky-sim (the libfranka network protocol served from MuJoCo) for tests, benchmarks and dry runs.

    python -m robot_bridge.robots.franky_sim --hostname 127.0.0.1       # what `franky-sim -s mujoco` does
    with FrankySim("127.0.0.1") as sim: ...                              # a subprocess, killed on exit

Its TCP ports (1337 robot, 1338 gripper) are fixed: one simulator per host address at a time.

Compatibility: franky-sim 1.0.x reads `Frame.parentJoint` (pinocchio >= 3). In a numpy < 2 environment (ours:
robosuite pins it) the newest installable pinocchio is 2.7 (`pin` >= 3.3 wheels need numpy >= 2.2 through
cmeel-boost 1.87), which calls the same field `Frame.parent`. This launcher adds the alias before franky-sim
starts; nothing else differs for what franky-sim uses. With pinocchio >= 3 it changes nothing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

ROBOT_PORT, GRIPPER_PORT = 1337, 1338


def _pinocchio_compat() -> None:
    import pinocchio

    if not hasattr(pinocchio.Frame, "parentJoint"):
        pinocchio.Frame.parentJoint = property(lambda self: self.parent)


def main(argv: list[str] | None = None) -> None:
    _pinocchio_compat()
    from franky_sim.run_server import main as run

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-s" not in argv and "--simulator" not in argv:
        argv = ["-s", "mujoco", *argv]
    sys.argv = ["franky-sim", *argv]
    run()


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as franky-sim binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:
    """Linux: SIGTERM the simulator when the process that started it dies (a crashed test run leaves no
    simulator holding the fixed ports)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class FrankySim:
    """franky-sim in a subprocess; start() returns once it accepts connections."""

    def __init__(self, hostname: str = "127.0.0.1", startup_timeout_s: float = 60.0, log_path: str | None = None):
        self.hostname = hostname
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []
        self._ready = threading.Event()

    def start(self) -> "FrankySim":
        for port in (ROBOT_PORT, GRIPPER_PORT):
            if port_in_use(self.hostname, port):
                raise RuntimeError(f"franky-sim: {self.hostname}:{port} is in use (another simulator running? its "
                                   f"ports are fixed, so only one can run per address)")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "robot_bridge.robots.franky_sim", "--hostname",
                                      self.hostname], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, start_new_session=True, preexec_fn=_die_with_parent)
        threading.Thread(target=self._read, daemon=True).start()
        end = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < end and not self._ready.is_set() and self.proc.poll() is None:
            self._ready.wait(0.1)
        if not self._ready.is_set():
            out = "".join(self.output[-30:])
            self.stop()
            raise RuntimeError(f"franky-sim did not start within {self.startup_timeout_s:.0f} s:\n{out}")
        return self

    def _read(self) -> None:
        log = open(self.log_path, "a") if self.log_path else None
        for line in self.proc.stdout:
            self.output.append(line)
            if log:
                log.write(line)
                log.flush()
            if "Connect to the server" in line:
                self._ready.set()
        if log:
            log.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    main()
