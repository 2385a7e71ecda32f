"""LIBERO (the benchmark suites openpi, LeRobot and the VLA papers report) driven over our protocol.

The env side runs in LIBERO's own venv (`make libero` -> .venv-libero: robosuite 1.4, no torch, no vla) and imports
only `robot_bridge` and this package; the CLI in the project venv starts its workers there.
"""
