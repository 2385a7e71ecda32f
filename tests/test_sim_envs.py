"""Real robosuite envs: every task creates, resets, steps; seeds reproduce; experts succeed; bad input errors."""

import gymnasium
import numpy as np
import pytest

import sim  # noqa: F401  (registers sim/<Task>-v0)
from sim.env import VLAEnv, validate_action
from sim.experts import make_expert, run_expert_episode
from sim.tasks import TASKS, get_task


@pytest.fixture(scope="module")
def envs():
    made = {t: VLAEnv(t, image_size=64) for t in TASKS}
    yield made
    for e in made.values():
        e.close()


@pytest.mark.parametrize("task", list(TASKS))
def test_task_schema(envs, task):
    env = envs[task]
    obs, info = env.reset(seed=3)
    assert set(obs) == {"images", "state", "instruction"}
    for cam in ("agentview", "wrist"):
        im = obs["images"][cam]
        assert im.dtype == np.uint8 and im.shape == (64, 64, 3)
        assert im.std() > 5  # a rendered scene, not a blank frame
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (9,)
    assert isinstance(obs["instruction"], str) and len(obs["instruction"]) > 5
    assert env.observation_space["state"].contains(obs["state"])
    obs2, r, term, trunc, info = env.step(np.zeros(7, np.float32))
    assert "success" in info and isinstance(info["success"], bool)
    priv = env.privileged()
    assert priv["object_pos"].shape == (3, 3)
    n = TASKS[task].n_objects
    assert np.all(np.abs(priv["object_pos"][:n]).sum(1) > 0)
    assert np.all(priv["object_pos"][n:] == 0)


def test_images_upright(envs):
    """robosuite renders upside down unless flipped: upright, the wrist camera sees its dark gripper fingers in the
    bottom rows and the light table above them."""
    obs, _ = envs["Lift"].reset(seed=0)
    wrist = obs["images"]["wrist"].astype(float).mean(axis=(1, 2))
    # the fingers (dark) occupy the bottom rows of an upright wrist image
    assert wrist[-4:].mean() < wrist[20:40].mean()


def test_seeds_reproduce(envs):
    env = envs["PickColor"]
    a = [env.reset(seed=11)[0]]
    for _ in range(5):
        a.append(env.step(np.full(7, 0.3))[0])
    b = [env.reset(seed=11)[0]]
    for _ in range(5):
        b.append(env.step(np.full(7, 0.3))[0])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["state"], y["state"])
        np.testing.assert_array_equal(x["images"]["agentview"], y["images"]["agentview"])
        assert x["instruction"] == y["instruction"]
    env.reset(seed=11)
    pos11 = env.privileged()["object_pos"].copy()
    env.reset(seed=12)
    assert not np.allclose(env.privileged()["object_pos"], pos11)


def test_pickcolor_instructions_vary(envs):
    env = envs["PickColor"]
    instr = {env.reset(seed=s)[0]["instruction"] for s in range(12)}
    assert len(instr) >= 2 and all(i.startswith("pick up the ") for i in instr)
    env = envs["StackColor"]
    instr = {env.reset(seed=s)[0]["instruction"] for s in range(12)}
    assert len(instr) >= 3 and all(i.startswith("put the ") for i in instr)


def test_gymnasium_make():
    env = gymnasium.make("sim/Lift-v0", image_size=32, cameras=("agentview",))
    obs, _ = env.reset(seed=0)
    assert obs["images"]["agentview"].shape == (32, 32, 3)
    env.close()


@pytest.mark.parametrize("task,seed", [(t, s) for t in TASKS for s in (0,)])
def test_expert_succeeds(task, seed):
    env = VLAEnv(task, cameras=(), render_mode=None)
    ok, steps = run_expert_episode(env, make_expert(task, noise=0.05), seed=seed)
    env.close()
    assert ok, f"{task} expert failed on seed {seed} after {steps} steps"


@pytest.mark.parametrize("task", ["Stack", "PickPlaceCan"])
def test_expert_lifts_only_after_fingers_part(task):
    """Placing experts: between the first "open" label and the end, no label lifts the hand while the finger opening
    (in the policy's state) is still within release_open of its width just before the release. The gripper's command
    ramps over several steps; a fixed-count wait made "stay and open" and "lift" labels for the same observed state."""
    env = VLAEnv(task, cameras=(), render_mode=None)
    expert = make_expert(task, noise=0.05)
    labels = []  # (action z, gripper, finger width)
    ok, steps = run_expert_episode(env, expert, seed=3, record=lambda obs, a, p: labels.append(
        (float(a[2]), float(a[6]), float(obs["state"][7] - obs["state"][8]))))
    env.close()
    assert ok, f"{task} expert failed after {steps} steps"
    first_open = next(i for i, (_, g, _) in enumerate(labels) if g < 0 and i > 0 and labels[i - 1][1] > 0)
    width0 = labels[first_open - 1][2]  # the expert measures from the last step before it opens
    early_lifts = [i for i, (z, g, w) in enumerate(labels[first_open:], first_open)
                   if z > 0.1 and w <= width0 + expert.release_open]
    assert not early_lifts, (f"{task}: the expert lifts at steps {early_lifts} with the fingers still within "
                             f"{expert.release_open} m of their width {width0:.4f} at the release (step {first_open})")


def test_unknown_task_lists_known():
    with pytest.raises(ValueError) as e:
        get_task("PickColour")
    msg = str(e.value)
    assert "PickColor" in msg and "Lift" in msg and "StackColor" in msg


@pytest.mark.parametrize(
    "bad,needle",
    [(np.zeros(6), "shape"), (np.zeros((7, 1)), "shape"), ([0, 0, np.nan, 0, 0, 0, 0], "NaN"),
     ([0, 0, 0, np.inf, 0, 0, 0], "inf"), ("abc", "action")],
)
def test_bad_actions(envs, bad, needle):
    env = envs["Lift"]
    env.reset(seed=0)
    with pytest.raises(ValueError) as e:
        env.step(bad)
    assert needle in str(e.value) and "action" in str(e.value)


def test_action_clipped():
    np.testing.assert_array_equal(validate_action([2, -3, 0, 0, 0, 0, 1]), [1, -1, 0, 0, 0, 0, 1])


def test_two_envs_in_one_process_render_their_own_scene():
    """Two instances of a task are the same env (Lift's cube size is drawn at construction), and closing one env
    must not break another's images (each env makes its own EGL context current)."""
    a = VLAEnv("Lift", image_size=32)
    ref = a.reset(seed=5)[0]["images"]["agentview"].copy()
    b = VLAEnv("Lift", image_size=32)
    np.testing.assert_array_equal(b.reset(seed=5)[0]["images"]["agentview"], ref)
    b.reset(seed=6)
    b.close()
    again = a.reset(seed=5)[0]["images"]["agentview"]
    a.close()
    np.testing.assert_array_equal(ref, again)


def test_lazy_observation_matches_robosuite_camera_observables():
    """advance() skips the cameras and observe() renders them on demand: the frames must be the pixels robosuite's
    own camera observables give (the path the recorded demos were made with), and step() == advance() + observe()."""
    import robosuite as suite

    from sim.env import CAMERA_SOURCES, configure_fast_rendering

    size, seed = 48, 4
    env, lazy = VLAEnv("Lift", image_size=size), VLAEnv("Lift", image_size=size)
    rs = suite.make("Lift", robots="Panda", has_renderer=False, has_offscreen_renderer=True, use_camera_obs=True,
                    camera_names=[CAMERA_SOURCES[c] for c in env.cameras], camera_heights=size, camera_widths=size,
                    hard_reset=False, ignore_done=True, horizon=100_000, reward_shaping=False, seed=0,
                    **get_task("Lift").env_kwargs)
    configure_fast_rendering(rs, size)
    try:
        rs.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        rs.sim._render_context_offscreen.gl_ctx.make_current()
        ref = rs.reset()
        obs, _ = env.reset(seed=seed)
        lazy.reset(seed=seed)
        rng = np.random.default_rng(0)
        for t in range(12):
            for cam in env.cameras:
                want = ref[f"{CAMERA_SOURCES[cam]}_image"][::-1]
                np.testing.assert_array_equal(obs["images"][cam], want, err_msg=f"step {t} {cam}")
            if t % 4 == 0:  # the lazy env is observed only every 4th step, and must then agree
                lo = lazy.observe()
                assert lazy.observe() is lo  # rendered once per step
                for cam in env.cameras:
                    np.testing.assert_array_equal(lo["images"][cam], obs["images"][cam])
                np.testing.assert_array_equal(lo["state"], obs["state"])
            a = rng.uniform(-1, 1, 7)
            rs.sim._render_context_offscreen.gl_ctx.make_current()
            ref, _, _, _ = rs.step(a)
            obs, r, term, trunc, info = env.step(a)
            assert lazy.advance(a) == (r, term, trunc, info)
    finally:
        rs.close()
        env.close()
        lazy.close()


def test_observe_before_reset_errors():
    env = VLAEnv("Lift", image_size=32)
    try:
        with pytest.raises(RuntimeError, match="reset"):
            env.observe()
        with pytest.raises(RuntimeError, match="reset"):
            env.advance(np.zeros(7))
    finally:
        env.close()


@pytest.mark.parametrize("task", list(TASKS))
def test_frustum_culling_keeps_every_pixel(envs, task):
    """observe() hides geoms outside each camera's view cone; every frame must equal robosuite's plain render, and
    the wrist camera must actually have had geoms to hide (else the test checks nothing)."""
    from sim.env import CAMERA_SOURCES, outside_view

    env = envs[task]
    env.reset(seed=7)
    mj = env._rs.sim
    model, data = getattr(mj.model, "_model", mj.model), getattr(mj.data, "_data", mj.data)
    rng = np.random.default_rng(1)
    for t in range(4):
        hidden = outside_view(model, data, CAMERA_SOURCES["wrist"])
        assert hidden is not None and hidden.sum() >= 5, f"{task} step {t}: nothing culled for the wrist camera"
        obs = env.observe()
        for cam in env.cameras:
            plain = mj.render(camera_name=CAMERA_SOURCES[cam], width=64, height=64)[::-1]
            np.testing.assert_array_equal(obs["images"][cam], plain, err_msg=f"{task} step {t} {cam}")
        for _ in range(3):
            env.advance(rng.uniform(-1, 1, 7))
    assert outside_view(model, data, "no_such_camera") is None


def test_collected_files_carry_robomimic_env_metadata_that_rebuilds_the_env(tmp_path):
    """data.attrs["env_args"] is robomimic's env metadata (type 1 = robosuite): its create_env_from_metadata calls
    robosuite.make(env_name, **env_kwargs) plus its own render flags; that call builds Lift here. Our own description
    sits in data.attrs["vla_env_args"]."""
    import json

    import h5py
    import robosuite

    from sim.collect import collect
    from vla.formats import load_demos

    out = str(tmp_path / "lift.hdf5")
    collect("Lift", episodes=1, out=out, image_size=32, noise=0.05, progress=False)
    with h5py.File(out, "r") as f:
        meta = json.loads(f["data"].attrs["env_args"])
        ours = json.loads(f["data"].attrs["vla_env_args"])
    assert meta["type"] == 1 and meta["env_name"] == "Lift" and ours["env_name"] == "Lift"
    kw = meta["env_kwargs"]
    assert kw["camera_names"] == ["agentview", "robot0_eye_in_hand"] and kw["camera_heights"] == 32
    env = robosuite.make(meta["env_name"], has_renderer=False, has_offscreen_renderer=False, ignore_done=True,
                         use_object_obs=True, use_camera_obs=False, **kw)  # robomimic's EnvRobosuite, robosuite v1
    obs = env.reset()
    assert "robot0_eef_pos" in obs and "cube_pos" in obs
    env.close()
    assert load_demos(out)[0].task == "Lift"
