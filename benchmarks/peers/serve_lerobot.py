"""Serve a trained LeRobot policy (ACT, Diffusion, ...) over our ZeroMQ policy protocol (docs/PROTOCOL.md).

Runs in the PEER venv made by benchmarks/peers/setup.sh (lerobot 0.4.4, torch 2.13 CPU), never in the project venv:

    .venv-peers/bin/python benchmarks/peers/serve_lerobot.py --policy DIR --bind tcp://127.0.0.1:5601 --threads 2

DIR: a `pretrained_model` folder written by lerobot-train (config.json, model.safetensors, policy_preprocessor.json,
policy_postprocessor.json + their .safetensors), or a folder holding one (a lerobot-train output dir, or
benchmarks/peers/train_lerobot.py's --out: checkpoints/last/pretrained_model is used).

The server is ours (robot_bridge.serving.server.PolicyServer: batching, validation, errors, timing); it is torch-free
and imports neither `vla` nor `sim`, so the repository root goes on sys.path and nothing of the project venv is used.
The adapter does what LeRobot's own inference does (lerobot.policies.utils.prepare_observation_for_inference +
the checkpoint's saved pre/post-processor pipelines from lerobot.policies.factory.make_pre_post_processors):

    obs {"images": {"agentview", "wrist": uint8 (H, W, 3)}, "state": float32 (9,), "instruction": str}
      -> {"observation.images.agentview": float32 (B, 3, H, W) in [0, 1], "observation.images.wrist": ...,
          "observation.state": float32 (B, 9), "task": [str] * B, "robot_type": ""}
      -> preprocessor (rename, batch, device, normalize with the checkpoint's stats)
      -> policy.predict_action_chunk(batch) (B, H, D)          [normalized]
      -> postprocessor (unnormalize, to CPU)                   -> float32 (H, D) per observation

Images of another size than the checkpoint's input features are resized (cv2 INTER_AREA), as our own policy does.
Policies with an observation history (Diffusion with n_obs_steps > 1) get the current observation repeated
n_obs_steps times: the protocol is stateless (one observation per request, every n_action_steps control steps), and
that is exactly what LeRobot's select_action does at the first step of an episode (populate_queues). Train such
policies with n_obs_steps=1 (benchmarks/peers/train_lerobot.py does for diffusion) to avoid the mismatch.

Handshake metadata: chunk_size = the length predict_action_chunk really returns (measured on a dummy observation at
startup: ACT -> chunk_size, Diffusion -> n_action_steps), n_action_steps = the checkpoint's n_action_steps (or
--n-action-steps), cameras {name: [H, W, 3]} from the checkpoint's input features, state_dim, action_space (from the
training dataset's meta/info.json when it is still where training read it, else eef_delta), parameters.
reset() resets the policy's queues and re-seeds torch's global generator (Diffusion samples its noise from it), so an
evaluation with the same seeds gives the same actions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # last: robot_bridge comes from here, nothing the peer venv has is shadowed

import numpy as np  # noqa: E402

log = logging.getLogger("serve_lerobot")
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"


def find_pretrained(path: str) -> Path:
    """A pretrained_model folder, or the one inside a training output folder (checkpoints/last/pretrained_model)."""
    p = Path(path)
    for cand in (p, p / "pretrained_model", p / "checkpoints" / "last" / "pretrained_model",
                 p / "train" / "checkpoints" / "last" / "pretrained_model"):
        if (cand / "config.json").is_file() and (cand / "model.safetensors").is_file():
            return cand.resolve()
    raise FileNotFoundError(f"{path}: no LeRobot pretrained_model (config.json + model.safetensors) here, nor in "
                            f"checkpoints/last/pretrained_model")


def _action_space(pretrained: Path, action_dim: int) -> dict:
    """What the actions mean, from the training dataset's meta/info.json (our exporter records vla_action_space)."""
    space = {"kind": "eef_delta", "dim": action_dim}
    try:
        tc = json.loads((pretrained / "train_config.json").read_text())
        root = (tc.get("dataset") or {}).get("root")
        info = json.loads((Path(root) / "meta" / "info.json").read_text()) if root else {}
    except (OSError, ValueError):
        info = {}
    kind = info.get("vla_action_space")
    if isinstance(kind, dict):
        space.update({k: v for k, v in kind.items() if isinstance(v, (str, int, float, bool, list))})
    elif isinstance(kind, str):
        space["kind"] = kind
    names = ((info.get("features") or {}).get("action") or {}).get("names")
    if isinstance(names, list) and len(names) == action_dim and all(isinstance(n, str) for n in names):
        space["names"] = names
    space["dim"] = action_dim
    return space


class LeRobotAdapter:
    """A LeRobot policy behind our server's policy interface: metadata, infer_batch(obs_list), reset()."""

    def __init__(self, policy_dir: str, device: str = "cpu", n_action_steps: int | None = None, seed: int = 0):
        import torch

        import lerobot
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        self.torch = torch
        self.dir = find_pretrained(policy_dir)
        cfg = PreTrainedConfig.from_pretrained(self.dir)
        cfg.device = device
        if getattr(cfg, "pretrained_backbone_weights", None):
            # The checkpoint holds every backbone weight; without this, building the model first downloads torchvision's
            # ImageNet weights (offline: fails) only for them to be overwritten.
            cfg.pretrained_backbone_weights = None
        self.cfg = cfg
        t0 = time.perf_counter()
        self.policy = get_policy_class(cfg.type).from_pretrained(self.dir, config=cfg)
        self.policy.to(device).eval()
        # the checkpoint's own pipelines (normalizer stats included), exactly as lerobot_eval loads them
        self.preprocessor, self.postprocessor = make_pre_post_processors(
            policy_cfg=cfg, pretrained_path=str(self.dir),
            preprocessor_overrides={"device_processor": {"device": device},
                                    "rename_observations_processor": {"rename_map": {}}})
        self.load_s = time.perf_counter() - t0
        self.device = device
        self.seed = int(seed)
        self.lerobot_version = lerobot.__version__

        self.image_keys = [k for k in cfg.image_features]
        bad = [k for k in self.image_keys if not k.startswith(IMAGE_PREFIX)]
        if bad:
            raise ValueError(f"image features {bad}: expected keys {IMAGE_PREFIX}<camera>")
        self.cameras = {k[len(IMAGE_PREFIX):]: tuple(cfg.image_features[k].shape) for k in self.image_keys}  # (C,H,W)
        if cfg.robot_state_feature is None:
            raise ValueError("the policy has no observation.state input; our protocol always sends a state")
        self.state_dim = int(cfg.robot_state_feature.shape[0])
        self.action_dim = int(cfg.action_feature.shape[0])
        self.n_obs_steps = int(getattr(cfg, "n_obs_steps", 1) or 1)
        self.nfe = int(getattr(cfg, "num_inference_steps", None) or getattr(cfg, "num_train_timesteps", 1) or 1) \
            if cfg.type == "diffusion" else 1
        self.parameters = int(sum(p.numel() for p in self.policy.parameters()))
        self.action_space = _action_space(self.dir, self.action_dim)
        self.reset()
        # the chunk length predict_action_chunk really returns (ACT: chunk_size; Diffusion: n_action_steps)
        dummy = {"images": {c: np.zeros((s[1], s[2], 3), np.uint8) for c, s in self.cameras.items()},
                 "state": np.zeros(self.state_dim, np.float32), "instruction": ""}
        self.chunk_size = int(self.infer_batch([dummy])[0]["actions"].shape[0])
        nas = int(n_action_steps or getattr(cfg, "n_action_steps", None) or self.chunk_size)
        if not 1 <= nas <= self.chunk_size:
            raise ValueError(f"n_action_steps: expected 1..{self.chunk_size} (the chunk length), got {nas}")
        self.n_action_steps = nas
        self.reset()

    @property
    def metadata(self) -> dict:
        return {
            "policy_type": f"lerobot_{self.cfg.type}",
            "lerobot_policy": self.cfg.type,
            "lerobot_version": self.lerobot_version,
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
            "n_action_steps": self.n_action_steps,
            "cameras": {c: [s[1], s[2], 3] for c, s in self.cameras.items()},
            "state_dim": self.state_dim,
            "action_space": dict(self.action_space),
            "parameters": self.parameters,
            "n_obs_steps": self.n_obs_steps,
            "nfe": self.nfe,
            "checkpoint": str(self.dir),
        }

    def reset(self) -> None:
        self.policy.reset()
        self.torch.manual_seed(self.seed)

    # ----- observation -> LeRobot batch -----
    def _check(self, obs: dict) -> None:
        if not isinstance(obs, dict) or any(k not in obs for k in ("images", "state", "instruction")):
            raise ValueError("obs: expected a dict with 'images', 'state', 'instruction'")
        for cam in self.cameras:
            im = obs["images"].get(cam) if isinstance(obs["images"], dict) else None
            if im is None:
                raise ValueError(f"obs['images']: missing camera {cam!r}; expected {list(self.cameras)}")
            im = np.asarray(im)
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"obs['images'][{cam!r}]: expected uint8 (H, W, 3), got {im.dtype} {im.shape}")
        st = np.asarray(obs["state"])
        if st.shape != (self.state_dim,) or not np.all(np.isfinite(st)):
            raise ValueError(f"obs['state']: expected finite float ({self.state_dim},), got {st.dtype} {st.shape}")

    def _batch(self, obs_list: list[dict]) -> dict:
        """What lerobot.policies.utils.prepare_observation_for_inference builds, for B observations at once."""
        torch = self.torch
        batch = {}
        for cam, (_, h, w) in self.cameras.items():
            ims = []
            for o in obs_list:
                im = np.asarray(o["images"][cam])
                if im.shape[:2] != (h, w):
                    import cv2

                    im = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
                ims.append(im)
            x = torch.from_numpy(np.stack(ims)).to(torch.float32).div_(255.0).permute(0, 3, 1, 2).contiguous()
            batch[IMAGE_PREFIX + cam] = x.to(self.device)
        state = np.stack([np.asarray(o["state"], np.float32) for o in obs_list])
        batch[STATE_KEY] = torch.from_numpy(state).to(self.device)
        batch["task"] = [str(o.get("instruction", "")) for o in obs_list]
        batch["robot_type"] = ""
        return batch

    def _predict(self, batch: dict):
        """policy.predict_action_chunk on a preprocessed batch; history policies get their queues filled first, the
        way their select_action does at an episode's first step (current observation repeated n_obs_steps times)."""
        policy = self.policy
        queues = getattr(policy, "_queues", None)
        if isinstance(queues, dict):
            from lerobot.policies.utils import populate_queues
            from lerobot.utils.constants import ACTION, OBS_IMAGES

            b = {k: v for k, v in batch.items() if k != ACTION}
            if self.image_keys:
                b[OBS_IMAGES] = self.torch.stack([b[k] for k in self.image_keys], dim=-4)
            policy.reset()
            policy._queues = populate_queues(policy._queues, b)
            return policy.predict_action_chunk(b)
        return policy.predict_action_chunk(batch)

    def infer_batch(self, obs_list: list[dict]) -> list[dict]:
        torch = self.torch
        for o in obs_list:
            self._check(o)
        with torch.inference_mode():
            t0 = time.perf_counter()
            batch = self.preprocessor(self._batch(obs_list))
            t1 = time.perf_counter()
            actions = self._predict(batch)
            t2 = time.perf_counter()
            actions = self.postprocessor(actions)
            t3 = time.perf_counter()
        a = actions.detach().to("cpu", torch.float32).numpy()
        if a.ndim == 2:  # (B, D): a single-step policy
            a = a[:, None, :]
        if a.shape[0] != len(obs_list) or a.shape[2] != self.action_dim:
            raise RuntimeError(f"policy returned actions of shape {a.shape} for {len(obs_list)} observations")
        timing = {"preprocess_ms": (t1 - t0) * 1e3, "model_ms": (t2 - t1) * 1e3, "decode_ms": (t2 - t1) * 1e3,
                  "postprocess_ms": (t3 - t2) * 1e3, "total_ms": (t3 - t0) * 1e3, "nfe": self.nfe,
                  "batch": len(obs_list)}
        return [{"actions": np.ascontiguousarray(x, dtype=np.float32), "timing": timing} for x in a]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True, help="LeRobot pretrained_model folder (or a training output folder)")
    ap.add_argument("--bind", default="tcp://127.0.0.1:5601", help="ZeroMQ endpoint (loopback)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-action-steps", type=int,
                    help="actions a synchronous client executes per chunk (default: the checkpoint's n_action_steps)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed set at every reset (diffusion noise)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=20.0, help="suggested control rate in the handshake (Hz)")
    ap.add_argument("--name", help="model name in the handshake (default: lerobot_<type>)")
    ap.add_argument("--timing-log", help="append one JSON line of timings per answered request")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from robot_bridge.serving.server import PolicyServer, ServerConfig

    adapter = LeRobotAdapter(args.policy, device=args.device, n_action_steps=args.n_action_steps, seed=args.seed)
    meta = adapter.metadata
    cfg = ServerConfig(bind=args.bind, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                       suggested_rate_hz=args.rate, name=args.name or meta["policy_type"], timing_log=args.timing_log)
    server = PolicyServer(adapter, config=cfg)
    server.serve_forever(on_start=lambda srv: print(
        f"[serve_lerobot] {cfg.name} ({meta['parameters'] / 1e6:.2f}M params, chunk {meta['chunk_size']}, "
        f"n_action_steps {meta['n_action_steps']}, threads {torch.get_num_threads()}, "
        f"loaded in {adapter.load_s:.1f} s) "
        f"on {srv.address}; Ctrl-C to stop", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
