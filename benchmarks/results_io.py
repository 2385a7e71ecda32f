"""Kept for scripts that import it by this name: the helpers live in common.py."""
from common import write_json  # noqa: F401
