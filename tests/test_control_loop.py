"""ControlLoop against a real robosuite env and real servers: outages, slow servers, alignment, sync equivalence."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from bridge_helpers import SlowPolicy, free_port

from robot_bridge.client import PolicyClient
from robot_bridge.control_loop import ControlLoop, EnvRobot, LoopConfig
from robot_bridge.serving.server import PolicyServer

TASK = "PickColor"
H = 8  # tiny preset chunk length


@pytest.fixture(scope="module")
def policy():
    from vla.policy import Policy

    return Policy.untrained("tiny")


@pytest.fixture(scope="module")
def env():
    from sim.env import VLAEnv

    e = VLAEnv(TASK, image_size=64)
    yield e
    e.close()


def _check_alignment(log, obs_at: dict, policy) -> int:
    """Every executed chunk action at step t came from a chunk requested at s <= t < s + H, and is that chunk's
    action t - s (recomputed independently from the observation at step s). Returns how many were checked."""
    chunks = {}
    n = 0
    for t, (s, a) in enumerate(zip(log.sources, log.actions)):
        if s < 0:
            continue
        assert 0 <= t - s < H, (t, s)
        if s not in chunks:
            chunks[s] = policy.infer(obs_at[s])["actions"]
        np.testing.assert_array_equal(np.asarray(a, np.float32), chunks[s][t - s], err_msg=f"step {t} from {s}")
        n += 1
    return n


@pytest.mark.parametrize("hold", ["hold", "zero"])
def test_server_killed_mid_episode_loop_holds_then_resumes(policy, env, hold):
    addr = f"tcp://127.0.0.1:{free_port()}"
    srv = PolicyServer(policy, bind=addr).start()
    client = PolicyClient(addr, timeout_ms=800, retries=0)
    client.hello()
    loop = ControlLoop(client, EnvRobot(env), LoopConfig(rate_hz=10, on_starvation=hold, request_below=6,
                                                         request_timeout_ms=800, retry_interval_s=0.05))
    marks: dict = {}
    started = threading.Event()  # the outage is timed from the episode's 5th step: a cold first reset can take 15 s

    def outage():
        started.wait(120)
        time.sleep(1.0)
        srv.stop()  # the server dies mid-episode...
        marks["down"] = time.monotonic()
        time.sleep(2.5)
        marks["srv"] = PolicyServer(policy, bind=addr).start()  # ...and comes back on the same port
        marks["up"] = time.monotonic()

    th = threading.Thread(target=outage)
    stamps = []

    def on_step(t, obs, a):
        stamps.append(time.monotonic())
        if t >= 5:
            started.set()

    th.start()
    try:
        log = loop.run_episode(seed=11, max_steps=70, keep_actions=True, on_step=on_step)
    finally:
        th.join()
        loop.close()
        client.close()
        marks["srv"].stop()
    st = log.stats
    assert log.length == 70
    assert st.starvation_events > 0 and st.request_failures > 0 and client.stats["timeouts"] > 0
    src = np.asarray(log.sources)
    acts = np.asarray(log.actions, np.float32)
    stamps = np.asarray(stamps)
    # with the server gone and the last chunk used up, every action is a hold: a chunk requested before the
    # outage (step <= down_step) covers at most chunk_size steps, so from down_step + chunk_size until the server
    # is back nothing but holds may run (counted in steps, not seconds: a loaded machine runs the loop late)
    down_step = int(np.searchsorted(stamps, marks["down"]))
    steps = np.arange(len(src))
    outage = np.where((steps >= down_step + policy.cfg.chunk_size) & (stamps < marks["up"]))[0]
    assert len(outage) >= 3 and np.all(src[outage] < 0), (src, down_step, outage)
    held = np.where(src < 0)[0]
    assert len(held) == st.starvation_events
    for t in held:
        assert np.all(acts[t, :-1] == 0)  # never move the arm without a plan
        prev = [a for a, s in zip(acts[:t], src[:t]) if s >= 0]
        want = prev[-1][-1] if hold == "hold" else 0.0
        assert acts[t, -1] == want, (t, acts[t], want)
    # resumed: chunks requested after the server came back drive the arm again
    fresh = [t for t in range(len(src)) if src[t] >= 0 and stamps[src[t]] > marks["up"]]
    assert len(fresh) >= 5, src
    assert st.chunks >= 3
    p50 = np.median(st.periods_ms)
    assert 80 <= p50 <= 160, p50  # 10 Hz, on a loaded 2-core machine


def test_slow_server_chunks_are_aligned_by_request_step(policy, env):
    slow = SlowPolicy(policy, [0.0, 0.25])  # every chunk after the first arrives several control steps late
    srv = PolicyServer(slow, bind="tcp://127.0.0.1:0").start()
    client = PolicyClient(srv.address, timeout_ms=3000, retries=0)
    loop = ControlLoop(client, EnvRobot(env), LoopConfig(rate_hz=10, request_below=7, request_timeout_ms=3000,
                                                         blend="none"))
    obs_at = {}

    def on_step(t, obs, a):
        obs_at[t] = obs

    try:
        log = loop.run_episode(seed=12, max_steps=40, keep_actions=True, on_step=on_step)
    finally:
        loop.close()
        client.close()
        srv.stop()
    st = log.stats
    assert st.chunks >= 3 and st.stale_dropped > 0  # late chunks arrived and their past steps were dropped
    assert min(st.latencies_ms[1:]) > 250
    assert _check_alignment(log, obs_at, policy) >= 8 + 4


def test_reply_after_its_deadline_is_discarded(policy, env):
    """A local policy cannot time out: the loop itself must refuse a chunk whose last action is already past."""
    slow = SlowPolicy(policy, [0.0, 0.0, 1.5, 0.0])  # the third chunk takes 1.5 s > 8 steps at 10 Hz
    loop = ControlLoop(slow, EnvRobot(env), LoopConfig(rate_hz=10, request_below=4, blend="none"))
    obs_at = {}
    try:
        log = loop.run_episode(seed=13, max_steps=45, keep_actions=True,
                               on_step=lambda t, obs, a: obs_at.__setitem__(t, obs))
    finally:
        loop.close()
    st = log.stats
    assert st.late_discarded >= 1 and st.starvation_events > 0
    assert len(set(s for s in log.sources if s >= 0)) == st.chunks  # only accepted chunks were executed
    _check_alignment(log, obs_at, policy)


def test_sync_mode_equals_local_rollout(policy, env):
    from sim.evaluate import rollout

    ref = rollout(env, policy, seed=21, replan_every=3, keep_actions=True, max_steps=14)
    loop = ControlLoop(policy, EnvRobot(env), LoopConfig(mode="sync", replan_every=3))
    log = loop.run_episode(seed=21, max_steps=14, keep_actions=True)
    assert log.actions == ref.actions and log.length == ref.length and log.success == ref.success
    assert log.sources == [t - t % 3 for t in range(14)]


def test_remote_eval_sync_matches_local_evaluation(policy, tmp_path, env):
    """vla eval --server in sync mode: the same actions, success and length as local evaluation, seed by seed."""
    from sim.evaluate import EVAL_SEED_BASE, rollout
    from vla.policy import Policy

    from sim.remote_eval import evaluate_server

    pdir = str(tmp_path / "policy")
    policy.save_pretrained(pdir)
    local = Policy.from_pretrained(pdir)
    seeds = (EVAL_SEED_BASE, EVAL_SEED_BASE + 1)
    refs = [rollout(env, local, seed=s, replan_every=4, keep_actions=True, max_steps=12) for s in seeds]
    srv = PolicyServer(Policy.from_pretrained(pdir), bind="tcp://127.0.0.1:0").start()
    try:
        with PolicyClient(srv.address, timeout_ms=20_000) as client:  # the client is a policy for rollout() too
            via_client = rollout(env, client, seed=seeds[0], replan_every=4, keep_actions=True, max_steps=12)
        assert via_client.actions == refs[0].actions
        summary = evaluate_server(srv.address, TASK, episodes=2, replan_every=4, image_size=64, videos=1,
                                  out_dir=str(tmp_path / "eval"), mode="sync", keep_actions=True, max_steps=12,
                                  progress=False, failure_videos=1)
    finally:
        srv.stop()
    assert summary["episodes"] == 2 and summary["mode"] == "sync" and summary["replan_every"] == 4
    episodes = [json.loads(x) for x in (tmp_path / "eval" / f"episodes_{TASK}.jsonl").read_text().splitlines()]
    for ep, seed, ref in zip(episodes, seeds, refs):
        assert ep["seed"] == seed and ep["instruction"] == ref.instruction
        assert ep["actions"] == ref.actions and ep["success"] == ref.success and ep["length"] == ref.length
    # the first episode as chosen (videos=1), the second because it failed (failure_videos=1; 12 steps never lift)
    assert not any(ref.success for ref in refs)
    names = sorted(p.name for p in (tmp_path / "eval" / "videos").glob("*.mp4"))
    assert names == [f"{TASK}_seed{s}_fail_sync.mp4" for s in seeds]
    assert [ep["video"] for ep in episodes] == [f"videos/{n}" for n in names]


def test_remote_eval_async_reports_loop_stats(policy):
    from sim.remote_eval import evaluate_server

    srv = PolicyServer(policy, bind="tcp://127.0.0.1:0").start()
    try:
        s = evaluate_server(srv.address, TASK, episodes=1, image_size=64, videos=0, mode="async", rate_hz=10,
                            max_steps=25, progress=False)
    finally:
        srv.stop()
    loop = s["loop"]
    assert s["mode"] == "async" and s["rate_hz"] == 10 and loop["steps"] == 25
    # the loop never runs faster than its rate (how close it gets is a benchmark's figure, not a test's)
    assert loop["loop_hz"] <= 10.5 and loop["chunks"] >= 3 and loop["jitter_ms_p99"] is not None
    # tick_hz: the mean period between ticks (24 periods here), without the first chunk's wait and the drain
    assert loop["tick_hz"] <= 10.5


def test_linear_blend_cross_fades_overlap(policy, env):
    loop = ControlLoop(policy, EnvRobot(env), LoopConfig(blend="linear"))
    old = {t: (np.full(7, 1.0, np.float32), 0) for t in range(5, 9)}  # steps 5..8 planned by chunk 0
    new = np.zeros((4, 7), np.float32)  # steps 6..9 from a chunk requested at step 3
    loop._merge(old, new, 6, 3)
    assert sorted(old) == [6, 7, 8, 9] and all(s == 3 for _, s in old.values())
    w = [old[t][0][0] for t in (6, 7, 8, 9)]
    assert w[0] == pytest.approx(0.75) and w[1] == pytest.approx(0.5) and w[2] == pytest.approx(0.25) and w[3] == 0
    with pytest.raises(ValueError, match="on_starvation"):
        LoopConfig(on_starvation="repeat")


def test_ensemble_blend_averages_every_prediction_of_a_step_oldest_weighted_most(policy, env):
    """ACT temporal ensembling in the async loop: a step's action is the mean of all chunks that predicted it,
    weights exp(-coeff * i), i = 0 the oldest; steps only the old chunk predicted keep their action."""
    loop = ControlLoop(policy, EnvRobot(env), LoopConfig(blend="ensemble", ensemble_coeff=0.5))
    plan: dict = {}
    loop._merge(plan, np.full((4, 7), 1.0, np.float32), 0, 0)  # steps 0..3
    loop._merge(plan, np.full((4, 7), 3.0, np.float32), 2, 1)  # steps 2..5
    loop._merge(plan, np.full((4, 7), 5.0, np.float32), 3, 2)  # steps 3..6
    w1, w2 = np.exp(-0.5), np.exp(-1.0)
    assert plan[0][0][0] == 1.0 and plan[5][0][0] == pytest.approx((3 + 5 * w1) / (1 + w1))
    assert plan[2][0][0] == pytest.approx((1 + 3 * w1) / (1 + w1))
    assert plan[3][0][0] == pytest.approx((1 + 3 * w1 + 5 * w2) / (1 + w1 + w2)) and plan[6][0][0] == 5.0
    assert plan[3][1] == 2  # the source is the newest chunk
    with pytest.raises(ValueError, match="blend: expected one of"):
        LoopConfig(blend="mix")


def test_request_cover_counts_the_observation_time(policy, env):
    """The queue must last through a request's observation (camera capture, rendering) as well as its round trip:
    the samples behind the adaptive request threshold count both, the logged latencies only the round trip."""

    class SlowCamera(EnvRobot):
        def get_observation(self):
            time.sleep(0.12)  # a camera slower than the whole round trip
            return super().get_observation()

    loop = ControlLoop(policy, SlowCamera(env), LoopConfig(rate_hz=5))
    try:
        log = loop.run_episode(seed=3, max_steps=24)
    finally:
        loop.close()
    covers = list(loop._recent_ms)
    assert log.stats.chunks >= 3 and len(covers) == log.stats.chunks
    async_rt = log.stats.latencies_ms[1:]  # the first chunk (before the clock starts) is timed with its observation
    assert min(covers[1:]) >= 120 and all(c >= r + 120 for c, r in zip(covers[1:], async_rt))


def test_adaptive_request_threshold_covers_the_slowest_recent_request():
    from robot_bridge.control_loop import ControlLoop

    period = 1 / 30
    assert ControlLoop._adaptive_below([], period, 8) == 4  # no history: half a chunk
    # 19 requests of 60 ms and one of 125 ms: with margin 1 the queue must cover 125 ms (4 periods) plus one step
    lat = [60.0] * 19 + [125.0]
    assert ControlLoop._adaptive_below(lat, period, 8, margin=1.0) == 5
    assert ControlLoop._adaptive_below(lat, period, 16, margin=2.0) == 9  # default margin: 250 ms, 8 periods + 1
    assert ControlLoop._adaptive_below(lat, period, 8) == 8  # never more than a chunk: request as the last one lands
    assert ControlLoop._adaptive_below([125.0] + [60.0] * 20, period, 8, margin=1.0) == 4  # only the last 20 count
    assert ControlLoop._adaptive_below([30.0], 1 / 20, 8) == 4  # fast requests: half a chunk is the floor
