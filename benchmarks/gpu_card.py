"""GPU card: what a forward pass, a chunk and a training step cost on an accelerator, per model preset.

Made for a lent device machine, where a session has ~15 minutes of device time: everything runs in one prepared
command. Two halves:

    # here, on the CPU machine (once; writes the ignored folder .gpu/, < 40 MB):
    .venv/bin/python benchmarks/gpu_card.py prepare
    # there, in one device run (carry .gpu; ~5 min): the card, then the decode table on the GPU
    bash benchmarks/gpu_card.sh

`run` (called by gpu_card.sh) writes one JSON:
  card      device name, memory, torch and CUDA versions
  passes    per preset (tiny / small / base, random init, fp32, batch 1): the prefix pass and one denoising pass
            of w = 7, 14, 28, 56 action tokens against the cached prefix (median ms, synchronized), and a whole
            `parallel` chunk (K passes over every token). On a CPU a pass costs about its width; the question
            for Fast-dVLA's tokens/s target is how flat that is on a GPU.
  train     per preset: real `Trainer.train_step`s (bf16 autocast on CUDA, AdamW) on a small demo file,
            samples/s over the timed steps after warm-up, and peak GPU memory.
The trained tiny teacher/student decode table (every decoder, real observations) comes from benchmarks/decode.py,
which gpu_card.sh runs with --device cuda.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

from common import ROOT, command, write_json

PREP = os.path.join(ROOT, ".gpu")
# what the device image lacks (its package list: /work/.library/device/KINDS.md): gymnasium (`import sim` registers
# the tasks with it; no simulator runs there) and pyzmq (transport_idle.py)
WHEELS = ("gymnasium==1.4.0", "farama-notifications==0.0.6", "pyzmq==27.3.0")


# ---------------------------------------------------------------------------------------------------------------
# prepare (CPU machine)
def write_demo_subset(src: str, dst: str, n: int) -> int:
    """The first n demos of a demo file -> dst (same layout; written to a temporary name, then renamed)."""
    import h5py

    from vla.formats.base import demo_index as _demo_index
    from vla.formats.hdf5 import IMAGE_KEYS
    from vla.formats.hdf5_writer import DemoWriter

    tmp = dst + ".tmp"
    with h5py.File(src, "r") as f:
        data = f["data"]
        names = sorted(data.keys(), key=_demo_index)[:n]
        with DemoWriter(tmp, json.loads(data.attrs["env_args"]), overwrite=True, valid_every=5) as w:
            for name in names:
                g, o = data[name], data[name]["obs"]
                w.add_demo(task=str(g.attrs["task"]), instruction=str(g.attrs["instruction"]),
                           seed=int(g.attrs["seed"]),
                           images={c: o[k][()] for c, k in IMAGE_KEYS.items() if k in o}, state=o["state"][()],
                           actions=g["actions"][()], object_pos=o["object_pos"][()], sim_states=g["states"][()])
    os.replace(tmp, dst)
    return len(names)


def prepare(args) -> int:
    from common import sample_observations, save_observations, training_data

    os.makedirs(PREP, exist_ok=True)
    data = args.data or training_data(args.teacher)
    if not data or not os.path.exists(data):
        print(f"--data: no demo file (the teacher's training data {data!r} is missing); collect one with "
              "`vla collect --task Lift --episodes 20 --out data/demo/lift.hdf5`", file=sys.stderr)
        return 2
    obs = sample_observations(data, n=args.obs, task=args.task)
    save_observations(os.path.join(PREP, f"{args.task.lower()}_obs.npz"), obs)
    n = write_demo_subset(data, os.path.join(PREP, "demos.hdf5"), args.demos)
    if args.wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "-d", os.path.join(PREP, "wheels"), *WHEELS], check=True)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(PREP) for f in fs)
    print(f"{PREP}: {len(obs)} observations, {n} demos, {size / 1e6:.1f} MB "
          f"(carry it: the device call's carry=['.gpu'])")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# run (device machine)
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def card_info(device) -> dict:
    import torch

    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, memory_gb=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count, cuda=torch.version.cuda)
    return info


def synthetic_obs(cfg, rng) -> dict:
    S = cfg.image_size
    return {"images": {c: rng.integers(0, 256, (S, S, 3), dtype=np.uint8) for c in cfg.cameras},
            "state": rng.normal(0, 0.1, cfg.state_dim).astype(np.float32), "instruction": "lift the cube"}


def pass_costs(preset: str, device, widths=(7, 14, 28, 56), n: int = 30) -> dict:
    """Prefix pass, one denoising pass per width, one parallel chunk: median ms, batch 1, fp32, random init."""
    import torch

    from vla.config import DecodeConfig
    from vla.decoding import decode
    from vla.model import count_parameters
    from vla.policy import Policy

    pol = Policy.untrained(preset, device=str(device), attention="block_causal")
    model, cfg = pol.model, pol.cfg
    x = pol.preprocess([synthetic_obs(cfg, np.random.default_rng(0))])
    out = {"preset": preset, "parameters_m": round(count_parameters(model) / 1e6, 2), "n": n}
    with torch.inference_mode():
        prefix = lambda: model.encode_prefix(x["images"], x["text_ids"], x["text_valid"], x["state"])  # noqa: E731
        out["prefix_ms"] = _median_ms(prefix, device, n)
        cache = prefix()
        slots = torch.arange(cfg.n_action_tokens, device=device)
        for w in widths:
            if w > cfg.n_action_tokens:
                continue
            tok = torch.full((1, w), cfg.mask_id, dtype=torch.long, device=device)
            out[f"pass_ms_w{w}"] = _median_ms(lambda: model.action_logits(cache, tok, slots[:w], span=(0, w)),
                                              device, n)
        dcfg = DecodeConfig(decoder="parallel", steps=8)
        out["parallel_chunk_ms"] = _median_ms(lambda: decode(model, prefix(), dcfg), device, n)
    out["pass_w56_over_w7"] = out.get("pass_ms_w56", float("nan")) / out["pass_ms_w7"]
    return out


def train_throughput(preset: str, data: str, device, steps: int, warmup: int, batch: int) -> dict:
    """Real optimizer steps of the training loop on `data`: samples/s over the timed steps."""
    import torch

    from vla.config import DataConfig, TrainConfig
    from vla.train import Trainer

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model=preset, data=DataConfig(paths=(data,)), out_dir=tmp, steps=warmup + steps,
                          batch_size=batch, save_every=0, val_every=0, log_every=10**9)
        tr = Trainer(cfg, progress=False)
        for _ in range(warmup):
            tr.train_step()
        _sync(tr.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            m, _ = tr.train_step()  # each step reads its loss back (a sync), as the training loop does
        _sync(tr.device)
        dt = time.perf_counter() - t0
    out = {"preset": preset, "batch_size": batch, "steps_timed": steps, "step_ms": dt / steps * 1e3,
           "samples_per_s": steps * batch / dt, "loss_last": m["loss"], "device": str(tr.device)}
    if device.type == "cuda":
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def run(args) -> int:
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    res: dict = {"command": command(__file__), "card": card_info(device),
                 "passes": [], "train": [], "errors": []}
    print(json.dumps(res["card"]), flush=True)

    def save():
        write_json(args.out, res)

    def piece(section: str, preset: str, fn) -> None:
        """One figure on its own: a failure (with its traceback in the log) must not cost the rest of the run."""
        try:
            r = fn()
            res[section].append(r)
            print(json.dumps(r), flush=True)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res["errors"].append({"what": f"{section} {preset}", "error": repr(e)})
        save()

    for preset in args.presets.split(",") if args.presets else []:
        piece("passes", preset, lambda: pass_costs(preset, device, n=args.passes))
    for preset in args.train_presets.split(",") if args.train_presets else []:
        piece("train", preset, lambda: train_throughput(preset, args.data, device, args.train_steps,
                                                        args.train_warmup, args.batch_size))
    return 1 if res["errors"] else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="CPU machine: observations, a small demo file and wheels -> .gpu/")
    p.add_argument("--teacher", default=os.path.join(ROOT, "vla", "pretrained", "lift_tiny"))
    p.add_argument("--data", default=None, help="demo file (default: the teacher's training data)")
    p.add_argument("--task", default="Lift")
    p.add_argument("--obs", type=int, default=100)
    p.add_argument("--demos", type=int, default=10)
    p.add_argument("--no-wheels", dest="wheels", action="store_false")
    r = sub.add_parser("run", help="device machine: the card")
    r.add_argument("--device", default=None, help="default: cuda when available")
    r.add_argument("--presets", default="tiny,small,base")
    r.add_argument("--passes", type=int, default=30, help="timed repetitions per figure")
    r.add_argument("--train-presets", default="tiny,small,base")
    r.add_argument("--data", default=os.path.join(PREP, "demos.hdf5"))
    r.add_argument("--train-steps", type=int, default=20)
    r.add_argument("--train-warmup", type=int, default=5)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--out", default=os.path.join(os.environ.get("OUT", os.path.join(ROOT, "benchmarks", "results")),
                                                 "gpu_card.json"))
    args = ap.parse_args(argv)
    return prepare(args) if args.cmd == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
