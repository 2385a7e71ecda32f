"""Own-data path, measured (issue 24): LeRobot v3 export round trip, video decode rate, training throughput from the
LeRobot folder (frame cache) against the same demos from HDF5, and the RAM of two DDP ranks.

    python benchmarks/data.py --hdf5 data/demo/lift.hdf5      # writes benchmarks/results/data.json (~6 min here)

The HDF5 defaults to the demos `make demo` collects (20 Lift demos, two 128 px cameras). Everything runs in one
process (the DDP part in torchrun subprocesses), one measurement at a time, HDF5 and LeRobot runs interleaved.

  export_roundtrip_psnr_db       per camera: frames exported as AV1 (LeRobot's defaults) and read back, PSNR at the
                                 stored size; also the mean absolute error in 1/255 and whether low-dim data is exact
  lerobot_decode_fps_{64,128}    frames per second to decode every episode's video, make it square and resize it
                                 into the on-disk frame cache (a cold cache: the first epoch's extra cost)
  cached_vs_hdf5_samples_ratio   training samples/s of the tiny preset reading the LeRobot folder through a warm frame
                                 cache, over the same demos read from HDF5 (in RAM), same steps, interleaved runs
  ram_ratio_2_ranks              torchrun --nproc_per_node 2: the summed PSS (proportional set size: shared pages
                                 counted once) of both ranks' peak over one rank's, for each source
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from common import ROOT, command, write_json


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def roundtrip(hdf5: str, work: str) -> dict:
    from vla.formats import load_demos, peek_dims
    from vla.formats.lerobot_v3_writer import export_lerobot

    fm = peek_dims(hdf5)["features"]
    demos = load_demos(hdf5, cameras=None)
    out = {}
    for mode in ("video", "images"):
        t0 = time.perf_counter()
        rep = export_lerobot(demos, os.path.join(work, mode), fps=fm.fps or 20.0, video=mode == "video",
                             robot_type="panda")
        out[f"export_{mode}_s"] = round(time.perf_counter() - t0, 2)
        out[f"export_{mode}_mb"] = round(rep.bytes / 1e6, 2)
        back = load_demos(os.path.join(work, mode), cameras=None)
        out[f"{mode}_lowdim_exact"] = bool(all(np.array_equal(a.state, b.state) and np.array_equal(a.actions, b.actions)
                                               and a.instruction == b.instruction for a, b in zip(demos, back)))
        for c in demos[0].images:
            ref = np.concatenate([d.images[c] for d in demos])
            got = np.concatenate([d.images[c] for d in back])
            if mode == "images":
                out[f"images_exact_{c}"] = bool(np.array_equal(ref, got))
            else:
                out[f"psnr_db_{c}"] = round(psnr(ref, got), 2)
                out[f"mean_abs_err_255_{c}"] = round(float(np.abs(ref.astype(np.float64) - got).mean()), 3)
                out["stored_size"] = list(ref.shape[1:3])
    out["hdf5_mb"] = round(os.path.getsize(hdf5) / 1e6, 2)
    out["episodes"], out["frames"] = len(demos), int(sum(len(d) for d in demos))
    return out


def decode_rates(root: str, work: str) -> dict:
    from vla.formats.frames import FrameCache
    from vla.formats.lerobot_v3 import LeRobotDir

    ds = LeRobotDir(root)
    keys = [k for k, f in ds.features.items() if f["dtype"] == "video"]
    out = {}
    for size in (64, 128):
        cache = os.path.join(work, f"cache{size}")
        t0 = time.perf_counter()
        for k in keys:
            FrameCache(ds, k, size, "crop", cache).open()
        dt = time.perf_counter() - t0
        out[f"lerobot_decode_fps_{size}"] = round(len(keys) * int(ds.info["total_frames"]) / dt, 1)
        shutil.rmtree(cache)
    return out


def train_rate(path: str, out_dir: str, steps: int, cache: str) -> dict:
    from vla.config import DataConfig, TrainConfig
    from vla.train import train

    cfg = TrainConfig.build(model="tiny", model_overrides={"image_size": 64},
                            data=DataConfig(paths=(path,), frame_cache=cache),
                            out_dir=out_dir, steps=steps, batch_size=32, warmup_steps=5, log_every=10 ** 6,
                            val_every=0, save_every=0, seed=0, threads=2)
    t0 = time.perf_counter()
    train(cfg, progress=False)
    total = time.perf_counter() - t0
    s = json.load(open(os.path.join(out_dir, "train_summary.json")))
    return {"samples_per_s": s["samples_per_s"], "wall_s": total}


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                for c in f.read().split():
                    out += [int(c)] + _children(int(c))
    except OSError:
        pass
    return out


def replicate(hdf5: str, out: str, times: int) -> str:
    """A bigger HDF5 for the RAM runs: every demo of `hdf5` copied `times` times (masks: every 10th valid)."""
    import h5py

    with h5py.File(hdf5, "r") as src, h5py.File(out, "w") as dst:
        data = dst.create_group("data")
        for k, v in src["data"].attrs.items():
            data.attrs[k] = v
        names, k = [], 0
        for _ in range(times):
            for n in src["data"].keys():
                src.copy(src["data"][n], data, name=f"demo_{k}")
                names.append(f"demo_{k}")
                k += 1
        dst.create_dataset("mask/train", data=np.array([n for i, n in enumerate(names) if i % 10 != 9], dtype="S"))
        dst.create_dataset("mask/valid", data=np.array([n for i, n in enumerate(names) if i % 10 == 9], dtype="S"))
    return out


def ddp_ram(path: str, nproc: int, out_dir: str, steps: int, cache: str, image_size: int = 128) -> dict:
    """Peak of the summed PSS of the training ranks (torchrun's own launcher process excluded)."""
    cfg = os.path.join(out_dir + ".yaml")
    os.makedirs(os.path.dirname(cfg), exist_ok=True)
    with open(cfg, "w") as f:
        json.dump({"model": "tiny", "model_overrides": {"image_size": image_size},
                   "data": {"paths": [path], "frame_cache": cache}, "out_dir": out_dir, "steps": steps,
                   "batch_size": 16, "warmup_steps": 2, "log_every": 10 ** 6, "val_every": 0, "save_every": 0,
                   "threads": 1}, f)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    p = subprocess.Popen([torchrun, "--nproc_per_node", str(nproc), "-m", "vla.cli", "train", "--config", cfg,
                          "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, per_rank = 0, {}
    err: list[str] = []
    threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True).start()
    while p.poll() is None:
        ranks = [c for c in _children(p.pid) if "vla.cli" in _cmdline(c)]
        pss = {c: v for c in ranks if (v := _pss_kb(c)) > 0}
        if sum(pss.values()) > peak:
            peak = sum(pss.values())
        for c, v in pss.items():
            per_rank[c] = max(per_rank.get(c, 0), v)
        time.sleep(0.2)
    if p.returncode != 0:
        raise RuntimeError(f"torchrun ({nproc} ranks) failed: {''.join(err)[-2000:]}")
    return {"pss_sum_peak_mb": round(peak / 1024, 1), "pss_per_rank_peak_mb": sorted(round(v / 1024, 1)
                                                                                     for v in per_rank.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hdf5", default=os.path.join(ROOT, "data/demo/lift.hdf5"))
    ap.add_argument("--steps", type=int, default=60, help="training steps per throughput run")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved HDF5/LeRobot throughput runs each")
    ap.add_argument("--ram-steps", type=int, default=30, help="steps per DDP RAM run (0: skip the RAM runs)")
    ap.add_argument("--ram-replicas", type=int, default=15, help="the RAM runs train on the demos copied this many "
                    "times (frames must outweigh torch's own ~600 MB per process to show)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/data.json"))
    args = ap.parse_args()
    if not os.path.exists(args.hdf5):
        sys.exit(f"{args.hdf5}: no demos; `make demo` collects them (or: vla collect --task Lift --episodes 20 "
                 f"--out {args.hdf5})")
    os.environ.setdefault("MUJOCO_GL", "egl")
    work = tempfile.mkdtemp(prefix="vla_data_bench_")
    res: dict = {"command": command(__file__),
                 "hdf5": os.path.relpath(args.hdf5, ROOT)}
    try:
        print("[data] export round trip", flush=True)
        rt = roundtrip(args.hdf5, work)
        res["roundtrip"] = rt
        res["export_roundtrip_psnr_db"] = min(v for k, v in rt.items() if k.startswith("psnr_db_"))
        print(json.dumps(rt), flush=True)
        print("[data] decode rates", flush=True)
        res.update(decode_rates(os.path.join(work, "video"), work))
        print({k: v for k, v in res.items() if "fps" in k}, flush=True)
        lerobot, cache = os.path.join(work, "video"), os.path.join(work, "cache")
        t0 = time.perf_counter()
        from vla.formats import load_demos

        load_demos(lerobot, cameras=None, image_size=64, frame_cache=cache)
        res["first_load_s_lerobot_cold_cache"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        load_demos(lerobot, cameras=None, image_size=64, frame_cache=cache)
        res["load_s_lerobot_warm_cache"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        load_demos(args.hdf5, cameras=None, image_size=64)
        res["load_s_hdf5"] = round(time.perf_counter() - t0, 2)
        runs: dict = {"hdf5": [], "lerobot_cached": []}
        for r in range(args.repeats):
            for name, path in (("hdf5", args.hdf5), ("lerobot_cached", lerobot))[:: 1 if r % 2 == 0 else -1]:
                print(f"[data] training throughput: {name} (repeat {r})", flush=True)
                runs[name].append(train_rate(path, os.path.join(work, f"run_{name}_{r}"), args.steps, cache))
        res["train_runs"] = runs
        med = {k: float(np.median([x["samples_per_s"] for x in v])) for k, v in runs.items()}
        res["samples_per_s"] = {k: round(v, 1) for k, v in med.items()}
        res["cached_vs_hdf5_samples_ratio"] = round(med["lerobot_cached"] / med["hdf5"], 3)
        if args.ram_steps:
            from vla.formats import load_demos as _ld
            from vla.formats.lerobot_v3_writer import export_lerobot

            big = replicate(args.hdf5, os.path.join(work, "big.hdf5"), args.ram_replicas)
            print(f"[data] DDP RAM: exporting {args.ram_replicas}x the demos", flush=True)
            big_lr = os.path.join(work, "big_lerobot")
            export_lerobot(_ld(big, cameras=None), big_lr, fps=20.0, robot_type="panda", progress=True)
            big_info = json.load(open(os.path.join(big_lr, "meta/info.json")))
            res["ram_dataset"] = {"episodes": big_info["total_episodes"], "frames": big_info["total_frames"],
                                  "image_size": 128, "cameras": 2,
                                  "frames_mb_in_ram": round(big_info["total_frames"] * 2 * 128 * 128 * 3 / 2 ** 20, 1)}
            t0 = time.perf_counter()
            _ld(big_lr, cameras=None, image_size=128, frame_cache=cache)  # warm: the RAM runs measure training
            res["ram_dataset"]["cache_build_s"] = round(time.perf_counter() - t0, 1)
            ram = {}
            for name, path in (("hdf5", big), ("lerobot_cached", big_lr)):
                for n in (1, 2):
                    print(f"[data] DDP RAM: {name}, {n} rank(s)", flush=True)
                    ram[f"{name}_{n}"] = ddp_ram(path, n, os.path.join(work, f"ddp_{name}_{n}"), args.ram_steps, cache)
            res["ram"] = ram
            res["ram_ratio_2_ranks"] = round(ram["lerobot_cached_2"]["pss_sum_peak_mb"]
                                             / ram["lerobot_cached_1"]["pss_sum_peak_mb"], 3)
            res["ram_ratio_2_ranks_hdf5"] = round(ram["hdf5_2"]["pss_sum_peak_mb"]
                                                  / ram["hdf5_1"]["pss_sum_peak_mb"], 3)
        prev = json.load(open(args.out)) if os.path.exists(args.out) else {}
        res["init_finetune"] = prev.get("init_finetune")  # written by benchmarks/init_finetune.py, kept here
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, res)
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
