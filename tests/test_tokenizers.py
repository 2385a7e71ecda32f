import numpy as np
import pytest

from vla.tokenizers import ActionTokenizer, ByteTokenizer, WordTokenizer, text_tokenizer_from_json


def test_action_roundtrip_within_half_bin():
    rng = np.random.default_rng(0)
    low, high = np.array([-1.0, -0.5, 0, -2, -1, -1, -1]), np.array([1.0, 0.5, 3, 2, 1, 1, 1])
    tok = ActionTokenizer(low, high, num_bins=256)
    a = rng.uniform(low, high, size=(5, 8, 7))
    ids = tok.tokenize(a)
    assert ids.shape == (5, 56) and ids.min() >= 0 and ids.max() < 256
    back = tok.detokenize(ids)
    assert back.shape == (5, 8, 7) and back.dtype == np.float32
    assert np.all(np.abs(back - a) <= tok.bin_width / 2 + 1e-6)


def test_action_clipping_and_mask():
    tok = ActionTokenizer(-np.ones(2), np.ones(2), num_bins=16)
    ids = tok.tokenize(np.array([[[5.0, -5.0]]]))
    assert ids.tolist() == [[15, 0]]
    assert tok.mask_id == 16
    with pytest.raises(ValueError, match="MASK"):
        tok.detokenize(np.array([[16, 3]]))
    with pytest.raises(ValueError, match="last dimension"):
        tok.tokenize(np.zeros((1, 2, 3)))
    assert ActionTokenizer.from_json(tok.to_json()).to_json() == tok.to_json()


def test_constant_dimension_is_safe():
    tok = ActionTokenizer(np.array([0.0, 1.0]), np.array([0.0, 2.0]))
    back = tok.detokenize(tok.tokenize(np.array([[[0.0, 1.5]]])))
    assert np.all(np.isfinite(back)) and abs(back[0, 0, 0]) < 1e-5


def test_word_tokenizer():
    tok = WordTokenizer.fit(["pick up the blue cube", "lift the cube"])
    ids, valid = tok.encode("Pick up the blue cube.", max_len=8)
    assert valid.sum() == 7  # bos + 5 words + "."
    assert ids[0] == tok.bos_id and tok.unk_id in ids  # "." was never seen
    ids2, _ = tok.encode("pick up the purple cube", max_len=8)
    assert tok.unk_id in ids2
    again = text_tokenizer_from_json(tok.to_json())
    assert np.array_equal(again.encode("lift the cube", 6)[0], tok.encode("lift the cube", 6)[0])
    ids3, valid3 = tok.encode("pick up the blue cube " * 5, max_len=4)
    assert valid3.all() and len(ids3) == 4


def test_byte_tokenizer():
    tok = ByteTokenizer()
    ids, valid = tok.encode("ab", 4)
    assert ids.tolist() == [2, ord("a") + 3, ord("b") + 3, 0] and valid.tolist() == [True, True, True, False]
