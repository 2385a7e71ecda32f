"""`vla data info PATH` and `vla data show PATH --episode N`: look at a dataset before training on it."""

from __future__ import annotations

import json
import os


def add_data(sub) -> None:
    s = sub.add_parser("data", help="inspect a dataset: info (features, sizes, quantiles), show (an episode as "
                                    "MP4 + PNG plots)")
    dsub = s.add_subparsers(dest="data_command", metavar="action")
    i = dsub.add_parser("info", help="episodes, frames, fps, features with shapes and dtypes, action/state quantiles, "
                                     "tasks")
    i.add_argument("path", help="a dataset: this project's HDF5, robomimic's layout, or a LeRobot v3 folder")
    i.add_argument("--json", action="store_true", help="everything as JSON (the feature map included), for scripts")
    i.set_defaults(func=_cmd_info)
    w = dsub.add_parser("show",
                        help="one episode: its cameras side by side as an MP4, its state and actions as PNG plots")
    w.add_argument("path")
    w.add_argument("--episode", type=int, default=0, help="index among the file's demos (sorted by number)")
    w.add_argument("--out", default="data_show", help="directory for <episode>.mp4 and <episode>_{state,action}.png")
    w.add_argument("--fps", type=float, help="video rate (default: the dataset's control rate)")
    w.set_defaults(func=_cmd_show)
    x = dsub.add_parser("export", help="write demos as a LeRobot v3.0 dataset folder (AV1 video as LeRobot writes it "
                                       "by default, or PNG image features with --images)")
    x.add_argument("paths", nargs="+", help="dataset files (any readable format); several mix into one dataset")
    x.add_argument("--to", choices=["lerobot"], default="lerobot", help="the format to write (default: lerobot)")
    x.add_argument("--out", required=True, help="the dataset folder to write (written to OUT.tmp, then renamed)")
    x.add_argument("--images", action="store_true", help="store frames as PNG image features instead of video")
    x.add_argument("--crf", type=int, default=30, help="AV1 quality (LeRobot's default 30; lower = better, larger)")
    x.add_argument("--fps", type=float, help="control rate (default: the dataset's)")
    x.add_argument("--image-size", type=int, help="make frames square (centre crop) and resize them to this size first "
                                                  "(default: as stored)")
    x.add_argument("--robot-type", default=None, help="info.json robot_type (default: panda for our sim files)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    x.set_defaults(func=_cmd_export)
    s.set_defaults(func=lambda args: (s.print_help(), 2)[1])


def _cmd_info(args) -> int:
    from vla.formats import describe

    d = describe(args.path)
    print(json.dumps(d, indent=1) if args.json else format_info(d))
    return 0


def format_info(d: dict) -> str:
    """describe()'s dict as a page to read: sizes, one line per feature, tasks, instructions, quantiles per dim."""
    def shape(ft):
        return "x".join(str(v) for v in ft["shape"])

    lines = [f"{d['path']} ({d['format']}): {d['episodes']} episodes, {d['frames']} frames"
             + (f", {d['fps']:g} fps" if d.get("fps") else ""), "features:"]
    for name, ft in d["features"].items():
        extra = ", ".join(str(x) for x in (ft.get("stored_as"), ft.get("codec"), ft.get("space")) if x)
        lines.append(f"  {name:<20} {ft['key']:<34} {shape(ft):<10} {ft['dtype']}" + (f" ({extra})" if extra else ""))
    lines.append("tasks: " + ", ".join(f"{t} ({n})" for t, n in d["tasks"].items()))
    lines.append("instructions: " + "; ".join(repr(i) for i in d["instructions"]))
    for what in ("action", "state"):
        q = d[what]
        lines.append(f"{what} per dim, q01 / q50 / q99:")
        for k in range(len(q["q50"])):
            lines.append(f"  [{k}] {q['q01'][k]:>9.4g} {q['q50'][k]:>9.4g} {q['q99'][k]:>9.4g}")
    lines.append("(--json: all of it as JSON, the feature map included)")
    return "\n".join(lines)


def _cmd_export(args) -> int:
    from vla.formats import load_demos, peek_dims
    from vla.formats.lerobot_v3_writer import export_lerobot

    fm = peek_dims(args.paths)["features"]
    demos = load_demos(args.paths, cameras=None, image_size=args.image_size, progress=True)
    ours = fm.state == ("state",)
    rep = export_lerobot(demos, args.out, fps=args.fps or fm.fps or 20.0, video=not args.images,
                         robot_type=args.robot_type or ("panda" if ours else None), crf=args.crf,
                         overwrite=args.overwrite, features=fm, progress=True)
    print(json.dumps(rep.__dict__, indent=1))
    return 0


def _cmd_show(args) -> int:
    import imageio.v2 as imageio
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from vla.formats import load_demos

    demos = load_demos(args.path, cameras=None)  # frames at their recorded size (video decoded, not cached)
    if not 0 <= args.episode < len(demos):
        raise ValueError(f"--episode: expected 0..{len(demos) - 1} ({len(demos)} demos in {args.path}), "
                         f"got {args.episode}")
    d = demos[args.episode]
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"episode_{args.episode}")
    written = {}
    if d.images:
        h = max(im.shape[1] for im in d.images.values())
        frames = [np.concatenate([np.pad(im[t], ((0, h - im.shape[1]), (0, 0), (0, 0))) for im in d.images.values()],
                                 axis=1) for t in range(len(d))]
        tmp = stem + ".tmp.mp4"
        imageio.mimsave(tmp, frames, fps=args.fps or 20, macro_block_size=1)
        os.replace(tmp, stem + ".mp4")
        written["video"] = stem + ".mp4"
    for what, arr in (("state", d.state), ("action", d.actions)):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for k in range(arr.shape[1]):
            ax.plot(arr[:, k], label=f"{what}[{k}]")
        ax.set_xlabel("step")
        ax.set_title(f"{os.path.basename(args.path)} episode {args.episode} ({d.task}: {d.instruction!r}): {what}")
        ax.legend(fontsize=6, ncol=2, loc="upper right")
        fig.tight_layout()
        path = f"{stem}_{what}.png"
        fig.savefig(path + ".tmp.png", dpi=100)
        plt.close(fig)
        os.replace(path + ".tmp.png", path)
        written[what] = path
    print(json.dumps({"episode": args.episode, "name": d.name, "steps": len(d), "cameras": list(d.images),
                      **written}, indent=1))
    return 0
