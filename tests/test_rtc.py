"""Real-time chunking by token inpainting (issue 26): the actions that run while the next chunk is decoded are given
to the decoder as known tokens and come back unchanged; training can condition on such prefixes; the wire protocol
carries them (old clients unchanged); the async control loop estimates the delay, sends the prefix and executes it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from bridge_helpers import free_port

from robot_bridge import protocol as P
from robot_bridge.client import PolicyClient
from robot_bridge.control_loop import ControlLoop, EnvRobot, LoopConfig
from robot_bridge.serving.server import PolicyServer
from vla.config import ModelConfig, PrefixConfig, TrainConfig
from vla.decoding import DECODER_FNS
from vla.objectives import give_prefix, noise
from vla.policy import Policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIDIR = os.path.join(ROOT, "vla/pretrained/lift_tiny")
STUDENT = os.path.join(ROOT, "vla/pretrained/lift_tiny_fast")


def _obs(p, seed=0):
    rng = np.random.default_rng(seed)
    c = p.cfg
    return {"images": {cam: rng.integers(0, 256, (c.image_size, c.image_size, 3), dtype=np.uint8) for cam in c.cameras},
            "state": rng.normal(size=c.state_dim).astype(np.float32) * 0.1, "instruction": "lift the cube"}


@pytest.fixture(scope="module")
def student():
    return Policy.from_pretrained(STUDENT)


@pytest.mark.parametrize("ckpt,decoder", [(BIDIR, "parallel"), (BIDIR, "parallel-cached"), (STUDENT, "parallel"),
                                          (STUDENT, "parallel-cached"), (STUDENT, "block"), (STUDENT, "pipelined")])
def test_inpainted_steps_come_back_unchanged_from_every_decoder(ckpt, decoder):
    p = Policy.from_pretrained(ckpt)
    p.set_decode(decoder=decoder)
    c = p.cfg
    rng = np.random.default_rng(1)
    obs = _obs(p)
    # token level: the given tokens are never changed, whatever the model prefers
    cache = p.model.encode_prefix(**{k: v for k, v in p.preprocess([obs, obs]).items()})
    A = c.n_action_tokens
    k = 3 * c.action_dim + 2  # three whole steps and part of the fourth
    known = torch.from_numpy(rng.integers(0, p.action_tokenizer.num_bins, (2, k)))
    known[1, -4:] = -1  # the second row knows less
    with torch.inference_mode():
        tokens, stats = DECODER_FNS[decoder](p.model, cache, p.decode_cfg, None, known=known)
    assert tokens.shape == (2, A) and stats["tokens"] == A
    given = known >= 0
    assert torch.equal(tokens[:, :k][given], known[given]) and bool((tokens < c.mask_id).all())
    # action level: float prefixes come back exactly as sent, for d = 0 .. H-1
    for d in (0, 1, 4, c.chunk_size - 1):
        pre = rng.uniform(-0.8, 0.8, (d, c.action_dim)).astype(np.float32)
        out = p.infer({**obs, "prefix_actions": pre})["actions"]
        assert out.shape == (c.chunk_size, c.action_dim) and np.array_equal(out[:d], pre)
    with pytest.raises(ValueError, match=r"prefix_actions'\]: expected float \(d, 7\) with 0 <= d < 8"):
        p.infer({**obs, "prefix_actions": np.zeros((c.chunk_size, c.action_dim), np.float32)})


def test_block_causal_student_given_its_own_first_steps_decodes_the_same_rest(student):
    """Exactness (block decoder): the known steps go straight into the cache as clean blocks; under block-causal
    attention the rest then sees exactly what it saw when the student decoded those steps itself. (The pipelined
    decoder is not exact here by design: its semi-active blocks reveal tokens while the block before is still
    partly masked, and a given block is clean from the first pass.)"""
    decoder = "block"
    student.set_decode(decoder=decoder)
    c = student.cfg
    for seed in range(3):
        obs = _obs(student, seed)
        full = student.infer(obs)["actions"]
        for steps in (c.block_size // c.action_dim, 2 * c.block_size // c.action_dim):
            part = student.infer({**obs, "prefix_actions": full[:steps]})["actions"]
            np.testing.assert_array_equal(part, full, err_msg=f"{decoder}, seed {seed}, {steps} steps given")


def test_prefix_conditioning_gives_clean_first_steps_and_is_off_by_default():
    mcfg = ModelConfig(action_dim=7, chunk_size=8, block_size=7, attention="bidirectional")
    tokens = torch.randint(0, 256, (64, 56))
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    off = noise(tokens, mcfg, TrainConfig(), g0)
    again = noise(tokens, mcfg, TrainConfig(prefix=PrefixConfig(prob=0.0)), g1)
    assert all(torch.equal(a, b) for a, b in zip(off, again))  # off: the same draws as before the option existed
    cfg = TrainConfig(prefix=PrefixConfig(prob=1.0, max_steps=5))
    g = torch.Generator().manual_seed(0)
    noised, masked = noise(tokens, mcfg, cfg, g)
    given_steps = []
    for b in range(64):
        clean = ~masked[b]
        d = 0
        while d < 8 and bool(clean[d * 7:(d + 1) * 7].all()) and torch.equal(noised[b, d * 7:(d + 1) * 7],
                                                                          tokens[b, d * 7:(d + 1) * 7]):
            d += 1
        given_steps.append(d)
        assert bool(masked[b].any())  # every sample still has a loss
    assert max(given_steps) >= 5 and min(given_steps) == 0 and np.mean(given_steps) > 2  # d ~ U{0..5}
    with pytest.raises(ValueError, match=r"prefix\.prob"):
        PrefixConfig(prob=1.5)
    # direct: with p = 1 and d_max = 7, at least one token stays masked
    n, m = give_prefix(tokens[:4], torch.full((4, 56), 256), torch.ones(4, 56, dtype=torch.bool), mcfg,
                       TrainConfig(prefix=PrefixConfig(prob=1.0, max_steps=7)), torch.Generator().manual_seed(1))
    assert bool(m.any(dim=1).all())


def test_protocol_carries_the_prefix_and_old_clients_are_unchanged(student):
    student.set_decode(decoder="pipelined")
    addr = f"tcp://127.0.0.1:{free_port()}"
    srv = PolicyServer(student, bind=addr).start()
    client = PolicyClient(addr, timeout_ms=20_000)
    try:
        meta = client.hello()
        assert meta["prefix_actions"] is True
        obs = _obs(student)
        plain = client.infer(obs)["actions"]  # a client that never heard of the field
        local = Policy.from_pretrained(STUDENT)
        local.set_decode(decoder="pipelined")
        np.testing.assert_array_equal(plain, local.infer(obs)["actions"])
        pre = np.random.default_rng(5).uniform(-0.5, 0.5, (3, 7)).astype(np.float32)
        got = client.infer({**obs, "prefix_actions": pre})["actions"]
        assert np.array_equal(got[:3], pre)
        np.testing.assert_array_equal(got, local.infer({**obs, "prefix_actions": pre})["actions"])
        with pytest.raises(Exception, match=r"prefix_actions: 8 steps; expected fewer than the chunk's 8"):
            client.infer({**obs, "prefix_actions": np.zeros((8, 7), np.float32)})
        assert client.infer(obs)["actions"].shape == (8, 7)  # the server lives on
    finally:
        client.close()
        srv.stop()
    spec = P.ObsSpec.from_metadata({"cameras": {"a": [8, 8, 3]}, "state_dim": 2, "action_dim": 7, "chunk_size": 8})
    with pytest.raises(P.ProtocolError, match="does not take a prefix"):  # a policy without the flag (a peer)
        P.parse_prefix_actions(P.encode_array(np.zeros((2, 7), np.float32)), spec)


@pytest.mark.slow
def test_async_loop_estimates_the_delay_and_executes_the_prefix_it_sent(student):
    """With 0 and 4 periods injected per chunk: the estimated delay follows the injected one, and every prefix the
    loop sent is exactly what it then executed at those steps. At 10 Hz: the env's step (physics and two camera
    renders in software) and the in-process decode share two cores, and on a slow one a 20 Hz loop starves the
    decode thread of time, which is a property of the machine, not of the loop under test."""
    from sim.env import VLAEnv

    env = VLAEnv("Lift", image_size=64)
    student.set_decode(decoder="pipelined")
    est = {}
    try:
        for inject in (0.0, 400.0):
            loop = ControlLoop(student, EnvRobot(env), LoopConfig(rate_hz=10, blend="inpaint", inject_delay_ms=inject))
            try:
                log = loop.run_episode(seed=1, max_steps=60, keep_actions=True)
            finally:
                loop.close()
            st = log.stats
            assert st.chunks >= 3 and st.rtc_prefixes, st.summary()
            est[inject] = float(np.mean(st.rtc_delay_steps[1:]))
            checked = 0
            for t, prefix in st.rtc_prefixes:
                for i, a in enumerate(prefix):
                    if t + i < log.length and log.sources[t + i] >= 0:
                        assert np.array_equal(np.asarray(log.actions[t + i], np.float32), np.asarray(a, np.float32)), \
                            (inject, t, i)
                        checked += 1
            assert checked >= 5
    finally:
        env.close()
    assert est[400.0] >= est[0.0] + 3, est  # 400 ms = 4 periods more


def test_loop_without_prefix_support_switches_as_before(student, caplog):
    """An old server (no prefix_actions): blend inpaint warns once and switches; the default (auto) switches without a
    warning. A server that takes a prefix gets inpainting by default."""

    class Old:
        """A server from before the field: no 'prefix_actions' in its metadata."""

        metadata = {k: v for k, v in student.metadata.items() if k != "prefix_actions"}

        def infer(self, obs):
            assert "prefix_actions" not in obs
            return student.infer(obs)

        def reset(self):
            student.reset()

    from sim.env import VLAEnv

    env = VLAEnv("Lift", image_size=64)
    try:
        loop = ControlLoop(Old(), EnvRobot(env), LoopConfig(rate_hz=20, blend="inpaint"))
        log = loop.run_episode(seed=2, max_steps=20)
        loop.close()
        assert "does not take prefix_actions" in caplog.text
        caplog.clear()
        loop = ControlLoop(Old(), EnvRobot(env), LoopConfig(rate_hz=20))  # blend auto
        auto_old = loop.run_episode(seed=2, max_steps=20)
        loop.close()
        assert "prefix_actions" not in caplog.text
        student.set_decode(decoder="pipelined")
        loop = ControlLoop(student, EnvRobot(env), LoopConfig(rate_hz=20))
        auto_new = loop.run_episode(seed=2, max_steps=20)
        loop.close()
    finally:
        env.close()
    assert log.length == 20 and not log.stats.rtc_prefixes and log.stats.blend == "none"
    assert auto_old.stats.blend == "none" and not auto_old.stats.rtc_prefixes
    assert auto_new.stats.blend == "inpaint" and auto_new.stats.rtc_prefixes
