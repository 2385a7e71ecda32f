"""Running a server in the foreground until SIGINT/SIGTERM: the one loop both servers (policy, robot) use."""

from __future__ import annotations

import signal
import threading


def serve_until_signal(server, stop_event: threading.Event, on_start=None, install_signals: bool = True) -> None:
    """server.start(), on_start(server), then block until `stop_event` is set (SIGINT/SIGTERM set it), then
    server.stop(). The signal handlers go in before the start, so a signal that arrives while the server comes up (or
    right after its first answer) stops it gracefully instead of raising KeyboardInterrupt in the middle of it."""
    old = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: stop_event.set())
    try:
        server.start()
        if on_start is not None:
            on_start(server)
        while not stop_event.wait(0.2):
            pass
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        server.stop()
