import torch

from vla.masks import action_allowed, action_table, full_mask, query_mask


def _allowed(m):
    return m[:, 0] == 0


def test_prefix_never_sees_actions_and_padding_hidden():
    pv = torch.tensor([[True, True, False, True], [True, True, True, True]])
    for mode in ("bidirectional", "block_causal"):
        m = _allowed(full_mask(pv, 6, 2, mode))
        assert m.shape == (2, 10, 10)
        assert not m[:, :4, 4:].any()  # prefix queries never see action keys
        assert not m[0, :, 2][torch.arange(10) != 2].any()  # padded prefix key hidden from everyone else
        assert m[1, :, :4].all()


def test_block_causal_rules():
    pv = torch.ones(1, 3, dtype=torch.bool)
    m = _allowed(full_mask(pv, 6, 2, "block_causal"))[0, 3:, 3:]  # action x action
    blocks = torch.arange(6) // 2
    for q in range(6):
        for k in range(6):
            assert bool(m[q, k]) == bool(blocks[k] <= blocks[q])
    mb = _allowed(full_mask(pv, 6, 2, "bidirectional"))[0, 3:, 3:]
    assert mb.all()


def test_query_mask_matches_full_mask_rows():
    pv = torch.tensor([[True, False, True, True]])
    full = full_mask(pv, 8, 2, "block_causal")
    cached = torch.tensor([0, 1, 2, 3])
    q = torch.tensor([4, 5, 6, 7])
    qm = query_mask(pv, cached, q, 2, "block_causal")
    # keys of the incremental pass are [prefix | cached | query] = the full sequence order here
    assert torch.equal(qm[0, 0], full[0, 0, 4 + 4 :, :])
    assert action_allowed(q, q, 2, "block_causal").tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


def test_action_table_slices_equal_query_masks():
    """The per-chunk table the decoders slice gives query_mask's mask for every contiguous pass they run."""
    pv = torch.tensor([[True, False, True, True, True], [True, True, True, False, False]])
    A, bs = 12, 3
    for mode in ("bidirectional", "block_causal"):
        table = action_table(pv, A, bs, mode)
        assert table.shape == (2, 1, A, pv.shape[1] + A)
        for lo in range(A):  # cache holds slots 0 .. lo-1, the pass queries lo .. hi-1
            for hi in range(lo + 1, A + 1):
                want = query_mask(pv, torch.arange(lo), torch.arange(lo, hi), bs, mode)
                got = table[:, :, lo:hi, : pv.shape[1] + hi]
                assert torch.equal(got, want), (mode, lo, hi)
