"""Where a served chunk's time goes: the torch profiler over our policies' `infer` (issue "peers": what would close the
latency gap to ACT-small).

    .venv/bin/python benchmarks/profile_decode.py --int8   # lift_tiny and multitask_tiny, 1 and 2 threads

Per policy and thread count, over --obs observations of --data (warm-up first; no network, no server):
  stages      p50 ms of the policy's own timing: preprocess (resize, normalise, tokenize), prefix (vision + text + state
              encoded once into the KV cache), decode (every denoising pass), total; per pass = decode / nfe
  ops         with torch.profiler (CPU activities): aten op calls per chunk (the CPU "kernel count") and their self
              time per chunk, grouped (matmul, attention, conv, norm, elementwise, sampling/reveal, copy/reshape, other)
  split       compute (matmul, attention, conv, norm self time) against small ops (views, copies, allocations,
              elementwise, sampling: many calls, little arithmetic); unaccounted = unprofiled wall time minus the ops'
              self time (Python between ops, module calls, thread hand-off). The profiler adds about a microsecond
              per op call, so op times are upper bounds and the unaccounted time a lower bound
Writes --out (default benchmarks/results/profile_decode.json).

--compare-compile instead times each policy eager against Policy.compile_model (torch.compile of the prefix and the
layer stack, as `vla serve --compile` runs it), two copies in one process, interleaved per observation (the order
alternates), and counts the observations whose chunks are identical:

    .venv/bin/python benchmarks/profile_decode.py --compare-compile --policy vla/pretrained/multitask_tiny \
        --data data/latency/pickcolor.hdf5 --task PickColor --obs 100 --threads 1 --out benchmarks/results/compile.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from common import ROOT, write_json

GROUPS = [  # (group, substrings of the aten op name after "aten::"); first match wins
    ("matmul", ("addmm", "mm", "bmm", "matmul", "linear")),
    ("attention", ("scaled_dot_product", "flash_attention", "softmax")),
    ("conv", ("conv",)),
    ("norm", ("layer_norm", "group_norm", "batch_norm", "rms_norm")),
    ("sampling/reveal", ("topk", "sort", "argmax", "max", "gather", "scatter", "where", "multinomial", "masked",
                         "cumsum", "nonzero", "index_put")),
]
VIEWS = {"as_strided", "slice", "to", "_to_copy", "copy_", "resolve_conj", "resolve_neg", "view", "transpose",
         "empty_strided", "reshape", "empty", "narrow", "_unsafe_view", "fill_", "cat", "stack", "index", "contiguous",
         "clone", "permute", "expand", "select", "zeros", "full", "unsqueeze", "squeeze", "t", "detach", "split",
         "chunk", "flatten", "result_type", "alias", "lift_fresh", "item", "_local_scalar_dense", "zero_", "new_empty",
         "new_zeros", "expand_as", "unbind", "repeat", "_reshape_alias", "numpy_T", "chunk", "split_with_sizes"}
COMPUTE = ("matmul", "attention", "conv", "norm")


def group_of(name: str) -> str:
    n = name.split("::", 1)[-1].lower()
    if n in VIEWS:
        return "views/copies/allocs"
    for g, keys in GROUPS:
        if any(k in n for k in keys):
            return g
    return "elementwise/other"


def profile_policy(path: str, obs: list[dict], threads: int, variant: str = "served",
                   steps_k: int | None = None) -> dict:
    """variant: "served" (as `vla serve` runs it: the fused fast path), "layers" (transformers' own layers, fast path
    off), "int8" (transformers' layers with every nn.Linear dynamically quantized to int8: the fused path reads fp32
    weights, so int8 compares with "layers")."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from vla.policy import Policy

    torch.set_num_threads(threads)
    pol = Policy.from_pretrained(path, decode={"steps": steps_k} if steps_k else None)  # None: its saved decode
    if variant in ("layers", "int8"):
        pol.model.fast_inference = False
    if variant == "int8":  # what-if: dynamic int8 quantization of every nn.Linear (latency only; success not measured)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pol.model = torch.ao.quantization.quantize_dynamic(pol.model, {torch.nn.Linear}, dtype=torch.qint8)
    for o in obs[:3]:
        pol.reset()
        pol.infer(o)
    stages = {k: [] for k in ("preprocess_ms", "prefix_ms", "decode_ms", "total_ms", "nfe")}
    walls = []
    for o in obs:
        pol.reset()
        t0 = time.perf_counter()
        r = pol.infer(o)
        walls.append((time.perf_counter() - t0) * 1e3)
        for k in stages:
            stages[k].append(float(r["timing"][k]))
    med = {k: float(np.median(v)) for k, v in stages.items()}
    wall = float(np.median(walls))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for o in obs:
            pol.reset()
            pol.infer(o)
    n = len(obs)
    groups: dict[str, dict] = {}
    top = []
    calls = 0
    self_us = 0.0
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        g = groups.setdefault(group_of(e.key), {"calls_per_chunk": 0.0, "self_ms_per_chunk": 0.0})
        g["calls_per_chunk"] += e.count / n
        g["self_ms_per_chunk"] += e.self_cpu_time_total / 1e3 / n
        calls += e.count
        self_us += e.self_cpu_time_total
        top.append((e.self_cpu_time_total / 1e3 / n, e.key, e.count / n))
    top.sort(reverse=True)
    ops_ms = self_us / 1e3 / n
    return {
        "policy": os.path.relpath(path, ROOT), "threads": threads, "observations": n, "variant": variant,
        "parameters": int(sum(p.numel() for p in pol.model.parameters())),
        "decoder": pol.decode_cfg.decoder, "nfe": med["nfe"],
        "stages_ms_p50": {k: round(v, 2) for k, v in med.items() if k != "nfe"},
        "per_pass_ms": round(med["decode_ms"] / med["nfe"], 2) if med["nfe"] else None,
        "wall_ms_p50": round(wall, 2),
        "aten_calls_per_chunk": round(calls / n, 1),
        "aten_calls_per_pass": round(calls / n / (med["nfe"] + 1), 1),  # + 1: the prefix pass
        "aten_self_ms_per_chunk": round(ops_ms, 2),
        "compute_ms_per_chunk": round(sum(d["self_ms_per_chunk"] for g, d in groups.items() if g in COMPUTE), 2),
        "small_ops_ms_per_chunk": round(sum(d["self_ms_per_chunk"] for g, d in groups.items() if g not in COMPUTE), 2),
        "small_ops_calls_per_chunk": round(sum(d["calls_per_chunk"] for g, d in groups.items() if g not in COMPUTE), 1),
        "unaccounted_ms_per_chunk": round(wall - ops_ms, 2),
        "us_per_aten_call": round(wall * 1e3 / (calls / n), 1) if calls else None,
        "groups": {g: {k: round(v, 2) for k, v in d.items()}
                   for g, d in sorted(groups.items(), key=lambda kv: -kv[1]["self_ms_per_chunk"])},
        "top_ops": [{"op": k, "self_ms_per_chunk": round(ms, 3), "calls_per_chunk": round(c, 1)}
                    for ms, k, c in top[:12]],
    }


def compare_compile(path: str, obs: list[dict], threads: int, steps_k: int | None) -> dict:
    """Eager against compiled, interleaved over the same observations -> p50/p99 ms of infer() and the ratio."""
    import torch

    from vla.policy import Policy

    torch.set_num_threads(threads)
    decode = {"steps": steps_k} if steps_k else None
    pols = {n: Policy.from_pretrained(path, decode=decode) for n in ("eager", "compiled")}
    compile_s = pols["compiled"].compile_model()
    for o in obs[:3]:
        for p in pols.values():
            p.reset()
            p.infer(o)
    ms: dict[str, list[float]] = {n: [] for n in pols}
    same = 0
    for i, o in enumerate(obs):
        chunks = {}
        for n in (["eager", "compiled"] if i % 2 == 0 else ["compiled", "eager"]):
            pols[n].reset()
            t0 = time.perf_counter()
            chunks[n] = pols[n].infer(o)["actions"]
            ms[n].append((time.perf_counter() - t0) * 1e3)
        same += int(np.array_equal(chunks["eager"], chunks["compiled"]))
    out = {n: {"ms_p50": round(float(np.median(v)), 2), "ms_p99": round(float(np.percentile(v, 99)), 2)}
           for n, v in ms.items()}
    return {"policy": os.path.relpath(path, ROOT), "threads": threads, "observations": len(obs),
            "passes": pols["eager"].decode_cfg.steps, **out, "compile_and_warmup_s": round(compile_s, 1),
            "compiled_over_eager_p50": round(out["compiled"]["ms_p50"] / out["eager"]["ms_p50"], 3),
            "identical_chunks": same}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", action="append", help="checkpoint directory (repeat; default lift_tiny and "
                                                      "multitask_tiny)")
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "lift.hdf5"), help="demos to take observations from")
    ap.add_argument("--task", default="Lift")
    ap.add_argument("--obs", type=int, default=40)
    ap.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    ap.add_argument("--int8", action="store_true", help="also each policy on transformers' layers, fp32 and with its "
                                                         "nn.Linear layers quantized to int8 (torch dynamic "
                                                         "quantization; a latency what-if)")
    ap.add_argument("--compare-compile", action="store_true",
                    help="time eager against torch.compile (interleaved) instead of profiling")
    ap.add_argument("--steps-k", type=int, help="passes of the parallel decoder (default: each checkpoint's saved one)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "profile_decode.json"))
    args = ap.parse_args(argv)
    from common import sample_observations

    policies = args.policy or [os.path.join(ROOT, "vla", "pretrained", n) for n in ("lift_tiny", "multitask_tiny")]
    obs = sample_observations(args.data, n=args.obs, seed=0, task=args.task)
    cmd = "python benchmarks/profile_decode.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.compare_compile:
        rows = [compare_compile(os.path.abspath(p), obs, int(t), args.steps_k)
                for p in policies for t in args.threads.split(",") if t]
        for r in rows:
            print(r, flush=True)
        write_json(args.out, {"rows": rows, "command": cmd, "data": os.path.relpath(os.path.abspath(args.data), ROOT),
                              "torch": __import__("torch").__version__, "cpu_count": os.cpu_count(),
                              "updated": time.strftime("%Y-%m-%d %H:%M:%S")})
        print(f"wrote {args.out}")
        return 0
    rows = []
    for path in policies:
        variants = ["served", "layers", "int8"] if args.int8 else ["served"]
        for t, q in [(int(x), v) for x in args.threads.split(",") if x for v in variants]:
            r = profile_policy(os.path.abspath(path), obs, t, variant=q, steps_k=args.steps_k)
            rows.append(r)
            g = ", ".join(f"{k} {v['self_ms_per_chunk']:.1f}" for k, v in r["groups"].items())
            print(f"{r['policy']} {t}T {q}: wall {r['wall_ms_p50']} ms ({r['nfe']:.0f} passes, {r['per_pass_ms']} ms "
                  f"each); stages {r['stages_ms_p50']}; {r['aten_calls_per_chunk']:.0f} aten calls, ops "
                  f"{r['aten_self_ms_per_chunk']} ms (compute {r['compute_ms_per_chunk']}, "
                  f"small ops {r['small_ops_ms_per_chunk']}), "
                  f"unaccounted {r['unaccounted_ms_per_chunk']} ms; {g}", flush=True)
    write_json(args.out, {"rows": rows, "command": cmd,
                          "data": os.path.relpath(args.data, ROOT), "cpu_count": os.cpu_count(),
                          "updated": time.strftime("%Y-%m-%d %H:%M:%S")})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
