"""Kept for scripts that import it by this name: the helpers live in common.py."""
from common import ROOT, VLA, cmd_str, policy_done, run, ship, train_record, train_run  # noqa: F401
