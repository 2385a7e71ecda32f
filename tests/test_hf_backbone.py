"""A policy on a user's local Hugging Face Llama / Qwen2 directory reloads exactly: the backbone's whole config is
saved with the checkpoint (vocabulary larger than the tokenizer's, attention biases, a non-default rms_norm_eps), and
Policy.from_pretrained rebuilds it from there, with the original directory gone."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from vla.config import load_model_config
from vla.model import DVLA, config_from_hf
from vla.normalization import StateNormalizer
from vla.policy import Policy
from vla.tokenizers import ActionTokenizer, HFTokenizer

WORDS = ["[PAD]", "[UNK]", "[BOS]", "pick", "up", "the", "red", "green", "blue", "cube", "lift"]


def _hf_dir(tmp_path, kind: str) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    d = str(tmp_path / kind)
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]",
                            bos_token="[BOS]").save_pretrained(d)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=3e-5)  # vocab > the tokenizer's 11; eps not the default
    torch.manual_seed(0)
    if kind == "llama":
        LlamaForCausalLM(LlamaConfig(**common, attention_bias=True)).save_pretrained(d)
    else:
        Qwen2ForCausalLM(Qwen2Config(**common)).save_pretrained(d)  # Qwen2: q/k/v biases always
    return d


def _inputs(m: DVLA, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = m.cfg
    imgs = torch.rand(2, len(cfg.cameras), 3, cfg.image_size, cfg.image_size, generator=g)
    text = torch.tensor([[2, 3, 4, 5, 6, 9], [2, 10, 5, 9, 0, 0]])
    valid = text != 0
    state = torch.randn(2, cfg.state_dim, generator=g)
    actions = torch.randint(0, cfg.num_bins + 1, (2, cfg.n_action_tokens), generator=g)
    return imgs, text, valid, state, actions


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_backbone_reloads_with_the_same_logits(tmp_path, kind):
    hf = _hf_dir(tmp_path, kind)
    mcfg = config_from_hf(load_model_config("tiny", {"backbone_path": hf, "text_tokenizer": "hf"}), hf)
    tok = HFTokenizer(hf)
    m = DVLA(mcfg, tok.vocab_size).eval()
    assert m.backbone.embed_tokens.num_embeddings == 97 > tok.vocab_size
    bcfg = m.backbone.config
    assert bcfg.rms_norm_eps == 3e-5 and (kind == "qwen2" or bcfg.attention_bias)
    p = Policy(m, ActionTokenizer(-np.ones(7), np.ones(7)), StateNormalizer(-np.ones(9), np.ones(9)), tok)
    with torch.no_grad():
        before = m(*_inputs(m))
    out = str(tmp_path / "policy")
    p.save_pretrained(out)
    assert os.path.isfile(os.path.join(out, "backbone_config.json"))
    shutil.rmtree(hf)  # the original directory is gone: everything comes from the checkpoint
    q = Policy.from_pretrained(out)
    assert q.model.backbone.config.model_type == kind and q.model.backbone.config.rms_norm_eps == 3e-5
    with torch.no_grad():
        after = q.model.eval()(*_inputs(q.model))
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_a_hf_directory_without_weights_is_a_clear_error(tmp_path):
    hf = _hf_dir(tmp_path, "llama")
    for f in os.listdir(hf):
        if f.endswith(".safetensors") or f.endswith(".bin"):
            os.remove(os.path.join(hf, f))
    mcfg = config_from_hf(load_model_config("tiny", {"backbone_path": hf, "text_tokenizer": "hf"}), hf)
    with pytest.raises(ValueError, match=r"backbone_path: .* has no weights"):
        DVLA(mcfg, 11)
