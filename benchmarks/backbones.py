"""Backbone classes side by side: ours (conv stems + a Llama stack), ours with the pretrained instruction encoder
(MiniLM), and the vision-language backbones from a local Hugging Face directory (vla/vlm.py: SmolVLM, Idefics3,
PaliGemma), each a random instance of the same small language-model shape saved like a downloaded model.

    .venv/bin/python benchmarks/backbones.py                       # here: tiny shapes, CPU, 1 thread (~1-2 min)
    python benchmarks/backbones.py --shape smolvlm-500m --kinds ours,smolvlm --device cuda   # on a lent GPU

Per class: parameters (trainable and frozen; the MiniLM encoder is frozen and outside the checkpoint), a train step
(batch 8, masked-diffusion loss, AdamW; median of the timed steps after warm-up), the served chunk latency (the real
PolicyServer and PolicyClient over loopback, `parallel` decoding, K = 8; p50 of the requests; on a GPU in-process
Policy.infer), measured interleaved over the classes round after round, each also as a ratio to ours, and whether
the saved checkpoint reloads with identical logits after the original directory is removed. Writes
benchmarks/results/backbones.json (or --out), with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from common import ROOT, command, write_json

KINDS = ("ours", "ours_minilm", "smolvlm", "idefics3", "paligemma")
WORDS = ("pick", "up", "lift", "the", "red", "green", "blue", "cube", "on", "put", "stack")
INSTRUCTION = "put the red cube on the blue cube"


def ours_overrides(shape: str) -> dict:
    """Our model at the VLMs' language-model shape (vla.vlm.SHAPES), conv stems for vision."""
    from vla.vlm import SHAPES

    t = SHAPES[shape]["text"]
    size = 32 if shape == "tiny" else 64
    return {"hidden_size": t["hidden_size"], "intermediate_size": t["intermediate_size"],
            "num_layers": t["num_hidden_layers"], "num_heads": t["num_attention_heads"],
            "num_kv_heads": t["num_key_value_heads"], "image_size": size,
            "vision_channels": (8, 16, 32) if shape == "tiny" else (32, 64, 128)}


def build(kind: str, shape: str, work: str, device: str):
    """-> (Policy, the Hugging Face directory it came from or None)."""
    from vla.config import load_model_config
    from vla.model import DVLA, config_from_hf
    from vla.normalization import StateNormalizer
    from vla.policy import Policy
    from vla.tokenizers import ActionTokenizer, HFTokenizer, WordTokenizer, instruction_vocabulary
    from vla.vlm import save_random_vlm

    torch.manual_seed(0)
    hf = None
    over = ours_overrides(shape)
    if kind in ("ours", "ours_minilm"):
        mcfg = load_model_config("tiny", {**over, "max_text_len": 16,
                                          **({"text_encoder": "minilm"} if kind == "ours_minilm" else {})})
        if kind == "ours_minilm":
            from vla.text_encoder import encoder_tokenizer

            tok = encoder_tokenizer(mcfg)
        else:
            tok = WordTokenizer.fit(instruction_vocabulary())
    else:
        hf = save_random_vlm(os.path.join(work, kind), kind, shape, words=WORDS)
        mcfg = config_from_hf(load_model_config("tiny", {"backbone_path": hf, "image_size": over["image_size"]}), hf)
        tok = HFTokenizer(hf)
    model = DVLA(mcfg, tok.vocab_size)
    act = ActionTokenizer(-np.ones(mcfg.action_dim), np.ones(mcfg.action_dim))
    state = StateNormalizer(-np.ones(mcfg.state_dim), np.ones(mcfg.state_dim))
    return Policy(model, act, state, tok, device=device), hf


def observation(p, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    S = p.cfg.image_size
    return {"images": {c: rng.integers(0, 256, (S, S, 3), dtype=np.uint8) for c in p.cfg.cameras},
            "state": rng.uniform(-1, 1, p.cfg.state_dim).astype(np.float32), "instruction": INSTRUCTION}


class TrainStep:
    """A real optimisation step (forward, masked-diffusion loss, backward, AdamW) on a fixed batch of 8."""

    def __init__(self, p, batch: int = 8):
        from vla.config import TrainConfig

        self.p, self.batch, self.tcfg = p, batch, TrainConfig()
        self.opt = torch.optim.AdamW([q for q in p.model.parameters() if q.requires_grad], lr=1e-4)
        self.x = p.preprocess([observation(p, i) for i in range(batch)])
        self.g = torch.Generator().manual_seed(0)
        self.target = torch.randint(0, p.cfg.num_bins, (batch, p.cfg.n_action_tokens), generator=self.g)

    def __call__(self) -> float:
        from vla.objectives import masked_ce, noise

        p, x = self.p, self.x
        cuda = p.device.type == "cuda"
        m = p.model.train()
        t0 = time.perf_counter()
        noised, masked = noise(self.target, p.cfg, self.tcfg, self.g)
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False):
            logits, _ = m(x["images"], x["text_ids"], x["text_valid"], x["state"], noised.to(p.device))
            loss = masked_ce(logits, self.target.to(p.device), masked.to(p.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        m.eval()
        return dt


class Server:
    """The policy behind the real PolicyServer, asked by a PolicyClient over loopback (on a GPU: in-process
    Policy.infer, pyzmq may be absent there)."""

    def __init__(self, p):
        self.p, self.obs = p, observation(p, 99)
        self.srv = self.cl = None
        if p.device.type != "cuda":
            from robot_bridge.client import PolicyClient
            from robot_bridge.serving.server import PolicyServer

            self.srv = PolicyServer(p, bind="tcp://127.0.0.1:0").start()
            self.cl = PolicyClient(self.srv.address, timeout_ms=60_000, retries=0).__enter__()

    def __call__(self) -> float:
        t0 = time.perf_counter()
        if self.cl is not None:
            out = self.cl.infer(self.obs)
            assert out["actions"].shape == (self.p.cfg.chunk_size, self.p.cfg.action_dim)
        else:
            self.p.infer(self.obs)
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    def close(self) -> None:
        if self.cl is not None:
            self.cl.__exit__(None, None, None)
            self.srv.stop()


def exact_reload(p, hf: str | None, work: str) -> bool:
    from vla.policy import Policy

    out = os.path.join(work, "ckpt")
    p.save_pretrained(out)
    if hf:
        shutil.rmtree(hf)  # the downloaded directory is gone: the checkpoint alone rebuilds the model
    q = Policy.from_pretrained(out, device=p.device)
    x = p.preprocess([observation(p, 1), observation(p, 2)])
    toks = torch.full((2, p.cfg.n_action_tokens), p.cfg.mask_id, device=p.device)
    toks[:, ::3] = 5
    with torch.no_grad():
        a, _ = p.model.eval()(x["images"], x["text_ids"], x["text_valid"], x["state"], toks)
        b, _ = q.model.eval()(x["images"], x["text_ids"], x["text_valid"], x["state"], toks)
    shutil.rmtree(out)
    return bool(torch.equal(a, b))


def measure(kinds: list[str], args) -> dict:
    """Every class built first, then measured interleaved (round after round over the classes), so a neighbour's
    load on the shared cores falls on all of them alike."""
    works, built, rows = {}, {}, {}
    try:
        for kind in kinds:
            works[kind] = tempfile.mkdtemp(prefix=f"backbones-{kind}-")
            t0 = time.perf_counter()
            built[kind] = build(kind, args.shape, works[kind], args.device)
            p = built[kind][0]
            enc = getattr(p.model, "text_encoder", None)
            rows[kind] = {
                "kind": kind, "backbone": p.cfg.backbone, "parameters": sum(q.numel() for q in p.model.parameters()),
                "trainable_parameters": sum(q.numel() for q in p.model.parameters() if q.requires_grad),
                "frozen_encoder_parameters_outside_checkpoint":
                    sum(q.numel() for q in enc.bert.parameters()) if enc is not None else 0,
                "vision_tokens": p.cfg.n_vision_tokens, "prefix_tokens": p.cfg.prefix_len,
                "build_s": round(time.perf_counter() - t0, 2)}
        steps = {k: TrainStep(built[k][0]) for k in kinds}
        for k in kinds:
            steps[k]()  # warm-up
            steps[k]()
        times = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for k in kinds:
                times[k] += [steps[k]() for _ in range(args.train_steps)]
        servers = {k: Server(built[k][0]) for k in kinds}
        try:
            for k in kinds:
                for _ in range(3):
                    servers[k]()
            ms = {k: [] for k in kinds}
            for _ in range(args.rounds):
                for k in kinds:
                    ms[k] += [servers[k]() for _ in range(args.requests)]
        finally:
            for srv in servers.values():
                srv.close()
        for k in kinds:
            p = built[k][0]
            rows[k].update({"train_step_s": statistics.median(times[k]), "train_steps_timed": len(times[k]),
                            "batch": 8, "chunk_ms_p50": statistics.median(ms[k]), "requests_timed": len(ms[k]),
                            "served_by": "Policy.infer" if p.device.type == "cuda"
                            else "PolicyServer + PolicyClient (loopback)"})
            rows[k]["exact_reload"] = None if args.skip_reload else exact_reload(p, built[k][1], works[k])
            print(json.dumps(rows[k]), flush=True)
        return rows
    finally:
        for w in works.values():
            shutil.rmtree(w, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", help="vla.vlm.SHAPES: tiny | smolvlm-500m")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds over the classes")
    ap.add_argument("--train-steps", type=int, default=3, help="timed train steps per class and round")
    ap.add_argument("--requests", type=int, default=6, help="timed chunk requests per class and round")
    ap.add_argument("--skip-reload", action="store_true", help="no exact-reload check (saves writing big checkpoints)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "backbones.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    kinds = args.kinds.split(",")
    rows = measure(kinds, args)
    if "ours" in rows:
        base = rows["ours"]
        for r in rows.values():
            r["parameters_ratio"] = r["parameters"] / base["parameters"]
            r["train_step_ratio"] = r["train_step_s"] / base["train_step_s"]
            r["chunk_latency_ratio"] = r["chunk_ms_p50"] / base["chunk_ms_p50"]
    import transformers

    write_json(args.out, {
        "command": command(__file__, argv),
        "shape": args.shape, "device": args.device, "threads": args.threads,
        "torch": torch.__version__, "transformers": transformers.__version__,
        **({"gpu": torch.cuda.get_device_name(),
            "peak_gpu_mem_gb_all_classes": torch.cuda.max_memory_allocated() / 2**30}
           if args.device.startswith("cuda") else {}),
        "what": "random instances of each backbone class at the same language-model shape (vla.vlm.SHAPES); "
                "ratios are to 'ours' (conv stems + Llama stack); train step: batch 8, AdamW; chunk: parallel "
                "decoding K=8, p50", "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
