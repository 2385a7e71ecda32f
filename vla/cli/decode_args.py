"""The decode flags shared by `vla eval`, `vla serve` and `vla export`, and the DecodeConfig overrides they make."""

from __future__ import annotations


def add_decode_args(s) -> None:
    """--decoder, --decode-steps, --steps-k, --start-blocks on an argparse (sub)parser; unset means the checkpoint's."""
    s.add_argument("--decoder", help="parallel | parallel-cached | block | pipelined")
    s.add_argument("--decode-steps", type=int, help="decode only the first m timesteps (block-causal models)")
    s.add_argument("--steps-k", type=int, dest="k", help="forward passes of the parallel decoder")
    s.add_argument("--start-blocks", type=int, help="pipelined decoder: blocks in flight at the first pass (default 1)")


def decode_overrides(args) -> dict:
    """The DecodeConfig fields the flags set (an empty dict: the checkpoint's saved decode as it is)."""
    d = {}
    if getattr(args, "decoder", None):
        d["decoder"] = args.decoder
    if getattr(args, "decode_steps", None):
        d["decode_steps"] = args.decode_steps
    if getattr(args, "k", None):
        d["steps"] = args.k
    if getattr(args, "start_blocks", None):
        d["start_blocks"] = args.start_blocks
    return d
