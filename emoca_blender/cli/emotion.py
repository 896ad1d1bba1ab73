"""The emotion commands of the CLI (EMOCA's "EMO"): ``emotion-train``, ``emotion-predict``,
``retrieve`` and ``refine``. Registered on ``python -m emoca_blender`` by :func:`add_parsers`.

* ``emotion-train TABLE.csv -o MODEL.pt``: train the 3DMM emotion MLP
  (:mod:`emotion_mlp`) on a labelled table of captures (CSV columns ``capture``,
  ``valence``, ``arousal``, ``label``, optional ``start``/``end``).
* ``retrieve CAPTURE [CAPTURE...] --frame N [-k K]``: the frames nearest to frame N of the
  first capture (or ``--query``) in emotion-feature space, at most one per clip
  (:mod:`emotion_retrieval`).
* ``refine CAPTURE -o OUT``: emotion-consistent expression (supplementary Eq. 1,
  :mod:`emotion_refine`) on keyframes, written as a new capture.
* ``emotion-predict CAPTURE --model MODEL.pt [-o OUT]``: apply a trained emotion MLP to
  a capture and write its per-frame ``valence`` and ``arousal`` (in place without ``-o``).

Bad input (missing files, a capture without emotion features, frames out of range...) is
one line on stderr and exit code 2, like every other command.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import BadInput


def _clip_name(path) -> str:
    name = Path(path).name
    for suffix in (".capture.npz", ".npz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _load(path):
    from .. import capture_file

    p = Path(path)
    if not p.is_file():
        raise BadInput(f"capture file not found: {p}")
    return capture_file.load_capture(p)


# -- emotion-train ---------------------------------------------------------------------------

def cmd_emotion_train(args, progress) -> int:
    from ..emotion import mlp as emotion_mlp
    from ..capture.pipeline import check_output

    out = Path(args.output)
    check_output(out)
    if not 0.0 < args.val_fraction < 1.0:
        raise BadInput(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    data = emotion_mlp.load_table(args.table, use_jaw=not args.no_jaw)
    n = int(data["X"].shape[0])
    if n < 4:
        raise BadInput(f"{args.table} gives {n} labelled frames; at least 4 are needed")
    if progress.mode == "json":
        progress.stage("train", args.max_epochs)

    def on_epoch(rec):
        if progress.mode == "json":
            progress.update(rec["epoch"] + 1, args.max_epochs)
        elif args.verbose:
            print(f"epoch {rec['epoch']:3d}  train {rec['train_loss']:.4f}  val "
                  f"{rec['val_loss']:.4f}  CCC v/a {rec['val_ccc_valence']:.3f}/"
                  f"{rec['val_ccc_arousal']:.3f}  acc {rec['val_accuracy']:.3f}")

    t0 = time.perf_counter()
    mlp = emotion_mlp.train(data["X"], data["valence"], data["arousal"], data["labels"],
                            data["class_names"], groups=data["groups"],
                            input_names=data["input_names"], hidden=args.hidden,
                            val_fraction=args.val_fraction, max_epochs=args.max_epochs,
                            patience=args.patience, seed=args.seed,
                            max_seconds=args.max_seconds, progress=on_epoch,
                            threads=args.threads)
    mlp.save(out)
    best = min(mlp.history, key=lambda r: r["val_loss"]) if mlp.history else {}
    info = {"output": str(out), "samples": n, "classes": list(data["class_names"]),
            "epochs": len(mlp.history), "seconds": round(time.perf_counter() - t0, 1),
            **{k: round(float(v), 4) for k, v in best.items() if k != "epoch"},
            "best_epoch": best.get("epoch")}
    progress.done(**info)
    if progress.mode != "json":
        print(f"wrote {out} ({n} frames, {len(data['class_names'])} classes, "
              f"{info['epochs']} epochs, best epoch {info['best_epoch']}: val loss "
              f"{info.get('val_loss', float('nan')):.4f}, CCC valence "
              f"{info.get('val_ccc_valence', float('nan')):.3f}, arousal "
              f"{info.get('val_ccc_arousal', float('nan')):.3f}, accuracy "
              f"{info.get('val_accuracy', float('nan')):.3f})")
    return 0


# -- emotion-predict -------------------------------------------------------------------------

def predicted_capture(cap, mlp, model_path) -> tuple:
    """``cap`` with the MLP's ``valence`` and ``arousal`` for every frame and the model
    recorded in meta (``emotion_mlp``). Frames without a face (``valid`` False) hold the
    nearest predicted value, as every capture array does (the format allows no NaN).
    Returns (capture, mask of the predicted frames)."""
    from ..emotion.mlp import capture_inputs
    from ..capture.filters import fill_gaps

    if not mlp.input_names:
        raise BadInput("the emotion MLP records no input names, so its inputs cannot be "
                       "matched to the capture's; train it with emotion-train")
    use_jaw = "jaw_rx" in mlp.input_names
    X, names = capture_inputs(cap, use_jaw)
    want = tuple(mlp.input_names)
    if tuple(names) != want:
        if len(want) == len(names):
            i = next(i for i, (a, b) in enumerate(zip(want, names)) if a != b)
            what = (f"the emotion MLP's {len(want)} inputs ({_input_parts(want)}) are not the "
                    f"capture's: input {i} is {want[i]!r} in the model, {names[i]!r} in the "
                    "capture")
        else:
            what = (f"the emotion MLP takes {len(want)} inputs ({_input_parts(want)}) but the "
                    f"capture gives {len(names)} ({_input_parts(names)})")
        raise BadInput(f"{what}: the model was trained on captures of another backend or head "
                       "model; use one trained (emotion-train) on captures like this one")
    valid = np.asarray(cap["valid"], bool)
    if not valid.any():
        raise BadInput("the capture has no frame with a face; nothing to predict")
    pred = mlp.predict(X[valid])
    va = np.zeros((cap.n_frames, 2), np.float32)
    va[valid] = np.stack([pred["valence"], pred["arousal"]], 1)
    va, _, _ = fill_gaps(va, valid, 0)          # gaps hold the last prediction
    record = {"model": str(Path(model_path).resolve()), "classes": list(mlp.class_names),
              "jaw": use_jaw}
    new = updated_capture(cap, {"valence": va[:, 0], "arousal": va[:, 1]},
                          {"emotion_mlp": record})
    return new, valid


def _input_parts(names) -> str:
    """'S identity + K expression [+ jaw]' for a list of MLP input names."""
    n_shape = sum(1 for n in names if n.startswith("shape") and n[5:].isdigit())
    jaw = "jaw_rx" in names
    return f"{n_shape} identity + {len(names) - n_shape - 3 * jaw} expression" + \
        (" + jaw" if jaw else "")


def cmd_emotion_predict(args, progress) -> int:
    from .. import capture_file
    from ..emotion import mlp as emotion_mlp
    from ..capture.pipeline import check_output, output_path

    src = Path(args.capture)
    out = output_path(args.output) if args.output else src     # in place: atomic rewrite
    check_output(out)
    mlp = emotion_mlp.EmotionMLP.load(args.model)
    cap = _load(src)
    if progress.mode == "json":
        progress.stage("predict", cap.n_frames)
    with emotion_mlp.torch_threads(args.threads):
        new, valid = predicted_capture(cap, mlp, args.model)
    capture_file.save_capture(new, out)
    n = int(valid.sum())
    info = {"output": str(out), "frames": cap.n_frames, "predicted": n,
            "mean_valence": round(float(new["valence"][valid].mean()), 4),
            "mean_arousal": round(float(new["arousal"][valid].mean()), 4),
            "jaw": new.meta["emotion_mlp"]["jaw"]}
    if progress.mode == "json":
        progress.update(cap.n_frames, cap.n_frames)
    progress.done(**info)
    if progress.mode != "json":
        held = cap.n_frames - n
        print(f"wrote {out}: valence and arousal predicted for {n} of {cap.n_frames} frames"
              + (f" ({held} without a face hold the nearest)" if held else "")
              + f", mean valence {info['mean_valence']:+.3f}, arousal "
              f"{info['mean_arousal']:+.3f}")
    return 0


# -- retrieve --------------------------------------------------------------------------------

def cmd_retrieve(args, progress) -> int:  # noqa: ARG001 - CLI signature
    from ..emotion.retrieval import EmotionIndex

    if args.k < 1:
        raise BadInput(f"-k must be at least 1, got {args.k}")
    paths = [Path(p) for p in args.captures]
    names = []
    seen: dict[str, int] = {}
    for p in paths:                       # unique names even for clips of the same stem
        n = _clip_name(p)
        seen[n] = seen.get(n, 0) + 1
        names.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    query_path = Path(args.query) if args.query else paths[0]
    ix = EmotionIndex()
    for p, n in zip(paths, names):
        ix.add_capture(_load(p), n)
    if args.query and query_path.resolve() not in [p.resolve() for p in paths]:
        qcap = _load(query_path)
        if "emotion_features" not in qcap:
            raise BadInput(f"{query_path.name} has no emotion features; capture it again "
                           "without --no-emotion")
        N = qcap.n_frames
        if not 0 <= args.frame < N:
            raise BadInput(f"--frame {args.frame} is outside {query_path.name} (0..{N - 1})")
        ok = qcap["valid"] & ~qcap["interpolated"]
        if not ok[args.frame]:
            raise BadInput(f"frame {args.frame} of {query_path.name} has no measured face")
        matches = ix.query(qcap["emotion_features"][args.frame], args.k, args.per_clip,
                           args.min_gap)
        qname = _clip_name(query_path)
    else:
        qname = names[[p.resolve() for p in paths].index(query_path.resolve())]
        cap_n = _load(query_path).n_frames
        if not 0 <= args.frame < cap_n:
            raise BadInput(f"--frame {args.frame} is outside {query_path.name} "
                           f"(0..{cap_n - 1})")
        matches = ix.query_frame(qname, args.frame, args.k, args.per_clip, args.min_gap,
                                 args.radius)
    if args.json:
        print(json.dumps({"query": {"clip": qname, "frame": args.frame},
                          "matches": [{"clip": m.clip, "frame": m.frame,
                                       "distance": round(m.distance, 5), "label": m.label}
                                      for m in matches]}))
    else:
        print(f"nearest frames to {qname} frame {args.frame} (emotion-feature L2, "
              f"{len(ix)} frames in {len(ix.clips)} clip(s)):")
        for r, m in enumerate(matches, 1):
            lab = f"  {m.label}" if m.label else ""
            print(f"{r:3d}. {m.clip} frame {m.frame}  distance {m.distance:.4f}{lab}")
        if not matches:
            print("  (none: no other measured frame qualifies)")
    return 0


# -- refine ----------------------------------------------------------------------------------

def _parse_frames(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise BadInput(f"--frames takes frame numbers like 10,20,30-35; got {part!r}") \
                from None
    if not out:
        raise BadInput("--frames is empty")
    return out


def updated_capture(cap, arrays: dict, meta: dict):
    """A copy of ``cap`` with some arrays and meta entries replaced or added."""
    from .. import capture_file

    new_arrays = {k: np.array(v) for k, v in cap.arrays.items()}
    new_arrays.update(arrays)
    return capture_file.make_capture(new_arrays, {**cap.meta, **meta}, dict(cap.names))


def refined_capture(cap, expression: np.ndarray, summary: dict, settings: dict):
    """A copy of ``cap`` with the refined expression (and, for captures whose expression is
    the ARKit channels, the ARKit curves too), the refinement recorded in meta, and the
    per-frame ``emotion_refined`` flag: the Strength on the frames whose expression changed,
    0 elsewhere (Key Emotion Curves keys it)."""
    touched = np.abs(np.asarray(expression) - np.asarray(cap["expression"])).max(1) > 1e-5
    strength = float(settings.get("strength", 1.0))
    arrays = {"expression": expression,
              "emotion_refined": np.where(touched, strength, 0.0).astype(np.float32)}
    if tuple(cap.names.get("expression", ())) == tuple(cap.names.get("arkit", ())):
        arrays["arkit"] = np.clip(expression, 0.0, 1.0)
    return updated_capture(cap, arrays,
                           {"emotion_refine": {"settings": settings, "summary": summary}})


def cmd_refine(args, progress) -> int:
    from .. import capture_file
    from ..capture import video
    from ..emotion.refine import RefineSettings, refine_capture
    from ..capture.pipeline import check_output, output_path

    out = output_path(args.output)
    check_output(out)
    if not 0.0 <= args.strength <= 1.0:
        raise BadInput(f"--strength must be in [0, 1], got {args.strength}")
    if args.keyframes < 1:
        raise BadInput(f"--keyframes must be at least 1, got {args.keyframes}")
    if args.iterations is not None and args.iterations < 1:
        raise BadInput(f"--iterations must be at least 1, got {args.iterations}")
    cap = _load(args.capture)
    src = Path(args.video) if args.video else Path(cap.meta.get("source", {}).get("path", ""))
    if not str(src) or not src.is_file():
        raise BadInput(f"the capture's video {src} is not there; pass it with --video")
    N = cap.n_frames
    subset = _parse_frames(args.frames) if args.frames else None
    s = RefineSettings(keyframe_step=args.keyframes, strength=args.strength,
                       threads=args.threads)
    if args.iterations is not None:
        s.iterations = int(args.iterations)
    start = int(cap.meta.get("frame_start", 0))
    info = video.probe(src)
    if info.frame_count and start + N > info.frame_count + 1:
        raise BadInput(f"{src.name} has {info.frame_count} frames; the capture needs "
                       f"{start}..{start + N - 1} (a different video?)")
    if progress.mode == "json":
        progress.stage("refine", None)

    def frames():
        it = video.iter_frames(src, start, start + N)
        try:
            for i, rgb in it:
                yield i - start, rgb
        finally:
            it.close()

    def on_frame(done, total):
        if progress.mode == "json":
            progress.update(done, total)

    t0 = time.perf_counter()
    res = refine_capture(cap, frames(), s, frame_subset=subset, progress=on_frame)
    summ = res.summary()
    summ["seconds"] = round(time.perf_counter() - t0, 1)
    summ["keyframes"] = [int(f.frame) for f in res.frames]
    summ["strength"] = float(s.strength)
    import dataclasses

    settings = {k: v for k, v in dataclasses.asdict(s).items()
                if isinstance(v, (int, float, str, bool)) or v is None}
    settings["frames"] = subset
    new = refined_capture(cap, res.expression, {**summ, "skipped_frames": res.skipped},
                          settings)
    capture_file.save_capture(new, out)
    progress.done(output=str(out), **{k: v for k, v in summ.items()})
    if progress.mode != "json":
        if summ.get("frames"):
            print(f"wrote {out}: {summ['frames']} keyframes refined in {summ['seconds']} s, "
                  f"emotion-feature distance {summ['feat_dist_before']:.3f} -> "
                  f"{summ['feat_dist_after']:.3f} ({100 * summ['feat_drop']:.0f}% lower), "
                  f"landmark error {summ['lmk_err_before']:.2f} -> "
                  f"{summ['lmk_err_after']:.2f} px")
        else:
            print(f"wrote {out}: nothing refined (no keyframe with a face)")
        if res.skipped:
            sk = res.skipped
            shown = ", ".join(map(str, sk[:10])) + (" ..." if len(sk) > 10 else "")
            print(f"skipped {len(sk)} frame(s) without a measured face: {shown}")
    return 0


# -- parsers ---------------------------------------------------------------------------------

def add_parsers(sub) -> None:
    """Register ``emotion-train``, ``emotion-predict``, ``retrieve`` and ``refine`` on the
    CLI's subparsers."""
    p = sub.add_parser(
        "emotion-train", help="train the emotion MLP on a labelled table of captures",
        description="Train the 3DMM emotion MLP (identity + expression + jaw -> valence, "
                    "arousal, class; 4 layers of 2048 with batch norm and LeakyReLU) on a CSV "
                    "with the columns capture,valence,arousal,label[,start,end] (capture paths "
                    "relative to the CSV). Adam 1e-4, batch 64, class-balanced sampling, early "
                    "stopping on a validation split (by clip when there are >= 5 rows).")
    p.add_argument("table", help="labelled table of captures (.csv)")
    p.add_argument("-o", "--output", required=True, help="output model (.pt)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="validation share (default 0.2)")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10,
                   help="stop after this many epochs without a better validation loss")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--hidden", type=int, default=2048, help="hidden width (default 2048)")
    p.add_argument("--no-jaw", action="store_true", help="identity + expression only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every epoch")
    p.set_defaults(func=cmd_emotion_train)

    p = sub.add_parser(
        "emotion-predict", help="valence and arousal of a capture from a trained emotion MLP",
        description="Apply an emotion MLP trained by emotion-train to a capture: per-frame "
                    "valence and arousal from its identity + expression (+ jaw, when the model "
                    "was trained with it), written into the capture's valence/arousal arrays "
                    "(Blender keys them as custom properties). Frames without a face hold the "
                    "nearest prediction. Without -o the capture is rewritten in place "
                    "(atomically). The model must have been trained on captures of the same "
                    "backend and head model.")
    p.add_argument("capture", help="input .capture.npz")
    p.add_argument("--model", required=True, metavar="MODEL.pt",
                   help="emotion MLP written by emotion-train")
    p.add_argument("-o", "--output", default=None,
                   help="output .capture.npz (default: rewrite the input in place)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.set_defaults(func=cmd_emotion_predict)

    p = sub.add_parser(
        "retrieve", help="frames that feel like a given frame (emotion-feature neighbours)",
        description="Nearest frames (L2 in the emotion network's feature space) to frame N of "
                    "the first capture (or of --query), over the measured frames of all the "
                    "captures given, at most --per-clip (default 1) per clip; the query's own "
                    "neighbourhood (--radius frames) is left out.")
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help=".capture.npz files")
    p.add_argument("--frame", type=int, required=True, metavar="N",
                   help="query frame (0-based, capture order)")
    p.add_argument("-k", type=int, default=5, metavar="K", help="how many matches (default 5)")
    p.add_argument("--query", default=None, metavar="CAPTURE",
                   help="take the query frame from this capture (default: the first)")
    p.add_argument("--per-clip", type=int, default=1, help="matches per clip (default 1)")
    p.add_argument("--min-gap", type=int, default=0,
                   help="frames between matches of one clip (with --per-clip > 1)")
    p.add_argument("--radius", type=int, default=15,
                   help="leave out the query's own frames within this many (default 15)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser(
        "refine", help="emotion-consistent expression (EMOCA Eq. 1) into a new capture",
        description="Refine the capture's expression so that a rendering of the head carries "
                    "the emotion of the video (EMOCA supplementary Eq. 1: gradient descent on "
                    "the emotion-feature distance, jaw, gaze and pose fixed), on keyframes "
                    "with the change interpolated between; writes a new capture. Frames "
                    "without a face are skipped and listed.")
    p.add_argument("capture", help="input .capture.npz (open head model)")
    p.add_argument("-o", "--output", required=True, help="output .capture.npz")
    p.add_argument("--video", default=None,
                   help="the capture's video (default: the source path stored in it)")
    p.add_argument("--keyframes", type=int, default=5, metavar="K",
                   help="refine every K-th measured frame, interpolate between (default 5; "
                        "1 = every frame)")
    p.add_argument("--frames", default=None, metavar="LIST",
                   help="refine exactly these capture frames instead, e.g. 10,20,30-35")
    p.add_argument("--strength", type=float, default=1.0, metavar="S",
                   help="0 = the capture, 1 = the optimum (default 1)")
    p.add_argument("--iterations", type=int, default=None,
                   help="optimiser steps per keyframe (default: RefineSettings')")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.set_defaults(func=cmd_refine)
