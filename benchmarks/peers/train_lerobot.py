"""Train LeRobot's ACT or Diffusion Policy on a local LeRobot v3.0 dataset folder with LeRobot's own trainer
(the `lerobot-train` console script of lerobot 0.4.4), offline, on the CPU, for a wall-clock budget.

Runs in the PEER venv made by benchmarks/peers/setup.sh, never in the project venv:

    .venv-peers/bin/python benchmarks/peers/train_lerobot.py --policy act --dataset exports/lift_lerobot \
        --out runs/peers/lift_act --minutes 60 [--batch-size 8] [--num-workers 1] [--seed 1000] [-- LEROBOT ARGS]

The dataset folder is one our exporter wrote (`vla data export data/lift.hdf5 --out exports/lift_lerobot`).

Recipe: LeRobot's defaults (policy presets: optimizer, scheduler, normalization, augmentation) except
  act        "ACT-small": --policy.dim_model=192 --policy.dim_feedforward=512 --policy.n_heads=4 (14.6M parameters with
             the ResNet-18 backbone; LeRobot's default ACT is 52M). Backbone: torchvision's ImageNet ResNet-18 weights
             (LeRobot's default) when they are already in the torch hub cache; offline without them,
             --policy.pretrained_backbone_weights=null (a randomly initialised backbone; --backbone-weights).
  diffusion  "Diffusion-small": --policy.down_dims=[64,128,256] --policy.noise_scheduler_type=DDIM
             --policy.num_inference_steps=10; --policy.n_obs_steps=1 (and drop_n_last_frames=8, LeRobot's formula
             horizon - n_action_steps - n_obs_steps + 1) because our protocol sends one observation per request;
             --policy.crop_shape=[s,s], s = 7/8 of the image side (56 at 64 px, 112 at 128; random crop in training,
             centre crop at inference): lerobot 0.4.4 no longer crops by default (crop_shape=None); 7/8 keeps the
             original Diffusion Policy ratio 84/96.
Anything after `--` goes to lerobot-train verbatim (later flags win), e.g. `-- --policy.chunk_size=20`.

Budget: unless --steps is given, a calibration run of --calib-steps steps (no checkpoint) measures the seconds per
step and the start-up time; the real run then gets --steps = what fits in --minutes (so schedulers such as
Diffusion's cosine decay end where LeRobot's recipe ends them) and saves a checkpoint every steps/--saves steps and
at the end. Should it still run past the budget (plus 5%, at least 15 s), it is stopped and the last complete
checkpoint (checkpoints/last) is kept. Older checkpoints are deleted unless --keep-checkpoints.

Video: the export is AV1; LeRobot's torchcodec backend decodes it with the FFmpeg libraries of the PyAV wheel that
setup.sh links into <venv>/lib/ffmpeg-from-av (put on LD_LIBRARY_PATH for lerobot-train here).

Writes into --out:
  train/                 lerobot-train's output_dir (train/checkpoints/last/pretrained_model: serve_lerobot.py --policy)
  train.log, calib.log   lerobot-train's log (progress bars dropped)
  train_summary.json     params, steps, samples/s, minutes, checkpoint path and size, the exact lerobot-train command
Exit status 0 when a usable checkpoint exists at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FFDIR = Path(sys.prefix) / "lib" / "ffmpeg-from-av"
RESNET18_IMAGENET = "resnet18-f37072fd.pth"  # torchvision ResNet18_Weights.IMAGENET1K_V1
STEP_RE = re.compile(r"\bstep:(\S+) smpl:(\S+) .*?\bloss:([-\d.naninf]+).*?\bupdt_s:([\d.]+) data_s:([\d.]+)")
PARAMS_RE = re.compile(r"num_(learnable|total)_params=(\d+)")


def _small_recipe(policy: str, args) -> list[str]:
    if policy == "act":
        flags = ["--policy.dim_model=192", "--policy.dim_feedforward=512", "--policy.n_heads=4"]
        weights = _backbone_weights(args.backbone_weights)
        if weights is None:
            flags.append("--policy.pretrained_backbone_weights=null")
        return flags
    if policy == "diffusion":
        n_obs = args.diffusion_n_obs_steps
        flags = ["--policy.down_dims=[64,128,256]", "--policy.noise_scheduler_type=DDIM",
                 "--policy.num_inference_steps=10", f"--policy.n_obs_steps={n_obs}",
                 f"--policy.drop_n_last_frames={16 - 8 - n_obs + 1}"]  # LeRobot: horizon - n_action_steps - n_obs + 1
        crop = args.diffusion_crop
        if crop < 0:  # the original Diffusion Policy ratio 84/96 of the dataset's smallest image side
            import json

            info = json.load(open(Path(args.dataset) / "meta" / "info.json"))
            sides = [min(f["shape"][:2]) for f in info["features"].values() if f.get("dtype") in ("video", "image")]
            crop = int(round(0.875 * min(sides))) if sides else 0
        if crop:
            flags.append(f"--policy.crop_shape=[{crop},{crop}]")
        return flags
    raise SystemExit(f"--policy: act or diffusion, got {policy!r}")


def _torch_hub_checkpoints() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints"


def _backbone_weights(choice: str) -> str | None:
    """ACT's backbone initialisation: LeRobot's default ImageNet weights when available offline, else none."""
    have = (_torch_hub_checkpoints() / RESNET18_IMAGENET).is_file()
    if choice == "imagenet":
        if not have:
            raise SystemExit(f"--backbone-weights imagenet: {_torch_hub_checkpoints() / RESNET18_IMAGENET} not found "
                             f"(offline: torchvision cannot download it)")
        return "ResNet18_Weights.IMAGENET1K_V1"
    if choice == "none":
        return None
    return "ResNet18_Weights.IMAGENET1K_V1" if have else None


def lerobot_train_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "lerobot-train"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "lerobot.scripts.lerobot_train"]


def child_env(threads: int | None, hf_cache: str) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", HF_DATASETS_CACHE=hf_cache,
               PYTHONUNBUFFERED="1")
    if FFDIR.is_dir():
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(FFDIR.resolve()), env.get("LD_LIBRARY_PATH")) if p)
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(threads)
    return env


def run_lerobot(cmd: list[str], env: dict, log_path: Path, deadline_s: float | None, tag: str) -> dict:
    """Run lerobot-train; tee its log (without progress bars) to log_path, print its metric lines; stop it at the
    deadline (seconds from start). Returns wall seconds, exit code, whether it was stopped, and parsed metrics."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def reader():
        for raw in iter(proc.stdout.readline, b""):
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    windows, params, stopped, done = [], {}, False, False
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        while not done:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                line = ""
            if line is None:
                done = True
                continue
            for piece in line.replace("\r", "\n").split("\n"):
                # a log line may follow a progress bar on the same line: keep it, drop the bar
                k = piece.find("INFO ")
                piece = piece[k:] if k > 0 and "Training:" in piece[:k] else piece
                if not piece.strip() or piece.lstrip().startswith("Training:"):
                    continue
                log.write(piece + "\n")
                m = STEP_RE.search(piece)
                if m:
                    windows.append({"t": time.time() - t0, "loss": float(m.group(3)), "updt_s": float(m.group(4)),
                                    "data_s": float(m.group(5))})
                    print(f"[{tag}] {time.time() - t0:6.0f} s  {piece[piece.find('step:'):]}", flush=True)
                elif (pm := PARAMS_RE.search(piece)):
                    params[pm.group(1)] = int(pm.group(2))
                elif any(w in piece for w in ("Error", "Traceback", "Checkpoint policy", "End of training")):
                    print(f"[{tag}] {piece.strip()}", flush=True)
            log.flush()
            if deadline_s is not None and not stopped and proc.poll() is None and time.time() - t0 > deadline_s:
                print(f"[{tag}] wall-clock budget spent ({time.time() - t0:.0f} s): stopping lerobot-train; the last "
                      f"complete checkpoint is kept", flush=True)
                stopped = True
                _stop(proc)
    rc = proc.wait()
    return {"wall_s": time.time() - t0, "rc": rc, "stopped": stopped, "windows": windows, "params": params}


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def step_seconds(windows: list[dict]) -> float | None:
    """Steady-state seconds per step: mean of (update + data) over the logged windows after the first (warm-up)."""
    ws = windows[1:] if len(windows) > 1 else windows
    return sum(w["updt_s"] + w["data_s"] for w in ws) / len(ws) if ws else None


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def safetensors_params(path: Path) -> int | None:
    """Parameter count from a safetensors header (no torch needed)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError):
        return None


def dir_mb(p: Path) -> float:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, choices=["act", "diffusion"])
    ap.add_argument("--dataset", required=True, help="LeRobot v3.0 dataset folder (meta/, data/, videos/)")
    ap.add_argument("--out", required=True, help="output folder (train/ inside is lerobot-train's output_dir)")
    ap.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the training run")
    ap.add_argument("--steps", type=int,
                    help="train exactly this many steps (no calibration; --minutes still stops it)")
    ap.add_argument("--batch-size", type=int, default=8, help="LeRobot's default: 8")
    ap.add_argument("--num-workers", type=int, default=1, help="dataloader workers (2-core machine: 0 or 1)")
    ap.add_argument("--seed", type=int, default=1000, help="LeRobot's default: 1000")
    ap.add_argument("--threads", type=int, help="OMP/MKL threads of lerobot-train (default: torch's choice)")
    ap.add_argument("--calib-steps", type=int, default=20, help="steps of the calibration run")
    ap.add_argument("--saves", type=int, default=10, help="checkpoints over the run (the last one at the end)")
    ap.add_argument("--log-freq", type=int, help="lerobot-train log_freq (default: about 40 lines per run)")
    ap.add_argument("--repo-id", help="dataset.repo_id (a local name; default local/<dataset folder name>)")
    ap.add_argument("--backbone-weights", choices=["auto", "imagenet", "none"], default="auto",
                    help="ACT's ResNet-18: ImageNet (LeRobot's default; needs the torch hub cache offline), none, or "
                         "auto = ImageNet when cached, else none")
    ap.add_argument("--diffusion-crop", type=int, default=-1, help="diffusion crop_shape side; 0 = LeRobot 0.4.4's "
                    "default (no crop); -1 (default) = 7/8 of the image side "
                    "(the paper's 84/96: 56 at 64 px, 112 at 128)")
    ap.add_argument("--diffusion-n-obs-steps", type=int, default=1, help="diffusion n_obs_steps (LeRobot's default 2)")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep every checkpoint, not only the last")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing OUT/train")
    args = ap.parse_args(argv)

    dataset = Path(args.dataset).resolve()
    info_path = dataset / "meta" / "info.json"
    if not info_path.is_file():
        raise SystemExit(f"--dataset {dataset}: no meta/info.json (export one with `vla data export ... --out DIR`)")
    info = json.loads(info_path.read_text())
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_dir, calib_dir = out / "train", out / "calib"
    if train_dir.exists():
        if not args.overwrite:
            raise SystemExit(f"{train_dir} exists (a finished run?); pass --overwrite to train again")
        shutil.rmtree(train_dir)
    for stale in ("train_summary.json",):
        if (out / stale).exists():
            (out / stale).unlink()
    shutil.rmtree(calib_dir, ignore_errors=True)

    import lerobot
    import torch

    budget_s = args.minutes * 60.0
    hf_cache = tempfile.mkdtemp(prefix="lerobot_hf_", dir=str(out))  # no stale Arrow cache of another export
    env = child_env(args.threads, hf_cache)
    repo_id = args.repo_id or f"local/{dataset.name}"
    base = [f"--dataset.repo_id={repo_id}", f"--dataset.root={dataset}", "--dataset.video_backend=torchcodec",
            f"--policy.type={args.policy}", "--policy.device=cpu", "--policy.push_to_hub=false",
            *_small_recipe(args.policy, args),
            f"--batch_size={args.batch_size}", f"--num_workers={args.num_workers}", f"--seed={args.seed}",
            "--eval_freq=0", "--wandb.enable=false"]
    summary = {"policy": args.policy, "name": {"act": "ACT-small", "diffusion": "Diffusion-small"}[args.policy],
               "dataset": {"root": str(dataset), "frames": info.get("total_frames"),
                           "episodes": info.get("total_episodes"), "fps": info.get("fps")},
               "batch_size": args.batch_size, "num_workers": args.num_workers, "seed": args.seed,
               "threads": args.threads or torch.get_num_threads(), "budget_minutes": args.minutes,
               "lerobot_version": lerobot.__version__, "torch_version": torch.__version__,
               "cpu_count": os.cpu_count()}
    if args.policy == "act":
        summary["backbone_weights"] = _backbone_weights(args.backbone_weights) or "none (random init)"

    t_all = time.time()
    try:
        # 1. calibration: seconds per step and start-up
        steps = args.steps
        if steps is None:
            n = max(4, args.calib_steps)
            cmd = lerobot_train_cmd() + base + [f"--steps={n}", f"--log_freq={max(1, n // 4)}",
                                                "--save_checkpoint=false", f"--output_dir={calib_dir}"] + extra
            print(f"[calib] {args.policy}: {n} steps to measure the step time", flush=True)
            cal = run_lerobot(cmd, env, out / "calib.log", deadline_s=max(budget_s, 300.0), tag="calib")
            shutil.rmtree(calib_dir, ignore_errors=True)
            per_step = step_seconds(cal["windows"])
            if cal["rc"] != 0 or not per_step:
                raise SystemExit(f"calibration run failed (exit {cal['rc']}); see {out / 'calib.log'}")
            startup = max(0.0, cal["wall_s"] - n * per_step)
            save_s = 1.5  # one checkpoint: ~60 MB of weights + ~120 MB of optimizer state
            steps = max(1, int((budget_s - startup - args.saves * save_s) / per_step))
            summary["calibration"] = {"steps": n, "wall_s": round(cal["wall_s"], 1), "step_s": round(per_step, 4),
                                      "startup_s": round(startup, 1)}
            print(f"[calib] {per_step:.3f} s/step, start-up {startup:.0f} s -> {steps} steps fit in "
                  f"{args.minutes:g} min", flush=True)

        # 2. the training run
        save_freq = max(1, math.ceil(steps / max(1, args.saves)))
        log_freq = args.log_freq or max(1, min(200, steps // 40 or 1))
        cmd = lerobot_train_cmd() + base + [f"--steps={steps}", f"--save_freq={save_freq}", f"--log_freq={log_freq}",
                                            f"--output_dir={train_dir}"] + extra
        summary["command"] = " ".join(cmd)
        summary["lerobot_args"] = cmd[len(lerobot_train_cmd()):]
        print(f"[train] {args.policy}: {steps} steps, batch {args.batch_size}, checkpoint every {save_freq} steps, "
              f"budget {args.minutes:g} min\n[train] $ {' '.join(cmd)}", flush=True)
        run = run_lerobot(cmd, env, out / "train.log", deadline_s=budget_s + max(15.0, 0.05 * budget_s), tag="train")
    finally:
        shutil.rmtree(hf_cache, ignore_errors=True)

    last = train_dir / "checkpoints" / "last"
    pretrained = last / "pretrained_model"
    ok = (pretrained / "model.safetensors").is_file() and (pretrained / "config.json").is_file()
    ckpt_step = None
    try:
        ckpt_step = json.loads((last / "training_state" / "training_step.json").read_text()).get("step")
    except (OSError, ValueError):
        pass
    if ok and not args.keep_checkpoints:
        keep = last.resolve()
        for d in (train_dir / "checkpoints").iterdir():
            if d.is_dir() and not d.is_symlink() and d.resolve() != keep:
                shutil.rmtree(d)
    per_step = step_seconds(run["windows"])
    done_steps = ckpt_step if run["stopped"] else (steps if run["rc"] == 0 else ckpt_step)
    params = run["params"].get("total") or (safetensors_params(pretrained / "model.safetensors") if ok else None)
    summary.update({
        "ok": bool(ok),
        "exit_code": run["rc"],
        "stopped_at_budget": run["stopped"],
        "steps_planned": steps,
        "steps_done": done_steps,
        "checkpoint_step": ckpt_step,
        "params": params,
        "learnable_params": run["params"].get("learnable"),
        "train_minutes": round(run["wall_s"] / 60.0, 3),  # the training run, start-up and checkpoints included
        "total_minutes": round((time.time() - t_all) / 60.0, 3),  # with the calibration
        "step_s": round(per_step, 4) if per_step else None,
        "samples_per_s": round(args.batch_size / per_step, 2) if per_step else None,  # steady state
        "samples_per_s_wall": round((done_steps or 0) * args.batch_size / run["wall_s"], 2) if run["wall_s"] else None,
        "final_loss": run["windows"][-1]["loss"] if run["windows"] else None,
        "checkpoint": str(pretrained) if ok else None,
        "checkpoint_mb": round(dir_mb(pretrained), 1) if ok else None,
        "checkpoint_with_training_state_mb": round(dir_mb(last.resolve()), 1) if ok else None,
    })
    write_json(out / "train_summary.json", summary)
    print(json.dumps({k: summary[k] for k in ("ok", "steps_done", "params", "train_minutes", "samples_per_s",
                                              "final_loss", "checkpoint", "checkpoint_mb")}), flush=True)
    if not ok:
        print(f"error: no usable checkpoint in {pretrained}; see {out / 'train.log'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
