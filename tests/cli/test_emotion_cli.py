"""The emotion commands of the CLI: ``capture --no-emotion``, ``emotion-train``,
``emotion-predict``, ``retrieve`` and ``refine`` -- their help, results and one-line
bad-input errors (exit code 2).

Most calls run ``cli.main`` in this process (the CLI's own entry point, without paying
for a fresh interpreter each time); a few real subprocesses check the exit code end to end.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

from emoca_blender.cli import main as cli
from emoca_blender.emotion import network as emotion
from emoca_blender.arkit import ARKIT_NAMES
from emoca_blender.capture_file import load_capture, make_capture, save_capture


def _have_fer() -> bool:
    try:
        emotion.fer_data_dir()
        return True
    except emotion.EmotionUnavailable:
        return False


needs_fer = pytest.mark.skipif(not _have_fer(), reason=f"fer missing: {emotion.FER_INSTALL}")


def synthetic_capture(path: Path, feats: np.ndarray, valid=None, expression=None,
                      emotion_fields: bool = True, seed: int = 0) -> Path:
    """A small valid capture whose emotion features are ``feats`` (N,F)."""
    rng = np.random.default_rng(seed)
    n = feats.shape[0]
    probs = rng.random((n, 7)) + 0.01
    probs /= probs.sum(1, keepdims=True)
    arrays = {
        "valid": np.ones(n, bool) if valid is None else np.asarray(valid, bool),
        "interpolated": np.zeros(n, bool), "timestamps": np.arange(n) / 30.0,
        "bbox": np.tile([10, 10, 110, 110], (n, 1)), "landmarks2d": np.zeros((n, 478, 2)),
        "landmarks3d": np.zeros((n, 478, 3)), "head_rotation": np.zeros((n, 3)),
        "head_translation": np.zeros((n, 3)), "jaw": rng.random((n, 3)) * 0.1,
        "eyes": np.zeros((n, 2, 3)), "blinks": np.zeros((n, 2)),
        "expression": rng.random((n, 52)) if expression is None else expression,
        "arkit": rng.random((n, 52)), "shape": np.zeros(0),
    }
    names = {"expression": ARKIT_NAMES}
    if emotion_fields:
        arrays["emotion_probs"] = probs
        arrays["emotion_features"] = feats
        names["emotion_probs"] = emotion.CLASS_NAMES
    cap = make_capture(arrays, {"fps": 30.0, "width": 640, "height": 480,
                                "source": {"path": str(path) + ".mp4"}}, names)
    return save_capture(cap, path)


def run(capsys, *args) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_help_of_the_emotion_commands(capsys):
    for cmd, words in (("emotion-train", ("valence", "--val-fraction", "class-balanced")),
                       ("retrieve", ("--frame", "-k", "per clip")),
                       ("refine", ("--keyframes", "--strength", "--frames", "Eq. 1")),
                       ("emotion-predict", ("--model", "valence", "in place", "-o")),
                       ("capture", ("--no-emotion",))):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        assert e.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for w in words:
            assert w in text, (cmd, w)


# -- retrieve ----------------------------------------------------------------------------

def test_retrieve_nearest_frames_one_per_clip(tmp_path, capsys):
    rng = np.random.default_rng(3)
    F = 16
    target = rng.standard_normal(F).astype(np.float32)
    paths, planted = [], {}
    for c in range(3):
        f = (rng.standard_normal((40, F)) * 4).astype(np.float32)
        j = 7 + 9 * c
        f[j] = target + 0.05 * (c + 1)          # clip c's best match, distance grows with c
        f[j + 1] = target + 0.05 * (c + 1.5)    # second best in the same clip: never listed
        planted[f"clip{c}"] = j
        paths.append(synthetic_capture(tmp_path / f"clip{c}.capture.npz", f, seed=c))
    q = (rng.standard_normal((30, F)) * 4).astype(np.float32)
    q[12] = target
    valid = np.ones(30, bool)
    valid[5] = False
    qp = synthetic_capture(tmp_path / "query.capture.npz", q, valid=valid, seed=9)

    rc, out, err = run(capsys, "retrieve", qp, *paths, "--frame", 12, "-k", 3, "--json")
    assert rc == 0, err
    res = json.loads(out)
    m = res["matches"]
    assert [x["clip"] for x in m] == ["clip0", "clip1", "clip2"]
    assert [x["frame"] for x in m] == [planted[f"clip{c}"] for c in range(3)]
    for c, x in enumerate(m):
        assert x["distance"] == pytest.approx(0.05 * (c + 1) * np.sqrt(F), rel=1e-3)
        assert x["label"] in emotion.CLASS_NAMES
    # -k larger than the clips: the query clip itself contributes one frame outside the
    # --radius neighbourhood, and no clip appears twice
    rc, out, _ = run(capsys, "retrieve", qp, *paths, "--frame", 12, "-k", 10, "--radius", 3,
                     "--json")
    m = json.loads(out)["matches"]
    assert len(m) == 4 and len({x["clip"] for x in m}) == 4
    own = [x for x in m if x["clip"] == "query"][0]
    assert abs(own["frame"] - 12) > 3 and own["frame"] != 5
    # human-readable output names the clips and frames
    rc, out, _ = run(capsys, "retrieve", qp, *paths, "--frame", 12, "-k", 2)
    assert rc == 0 and "clip0 frame 7" in out and "clip1 frame 16" in out


def test_retrieve_bad_input(tmp_path, capsys):
    f = np.zeros((10, 8), np.float32)
    good = synthetic_capture(tmp_path / "a.capture.npz", f)
    noemo = synthetic_capture(tmp_path / "b.capture.npz", f, emotion_fields=False)
    valid = np.ones(10, bool)
    valid[4] = False
    holes = synthetic_capture(tmp_path / "c.capture.npz", f, valid=valid)
    cases = [
        (("retrieve", good, "--frame", 10), "outside"),
        (("retrieve", good, noemo, "--frame", 1), "no emotion features"),
        (("retrieve", holes, "--frame", 4), "no measured emotion"),
        (("retrieve", tmp_path / "nope.capture.npz", "--frame", 1), "not found"),
        (("retrieve", good, "--frame", 1, "-k", 0), "-k"),
    ]
    for args, words in cases:
        rc, out, err = run(capsys, *args)
        assert rc == 2, (args, out, err)
        assert words in one_line_error(err), (args, err)


# -- emotion-train ------------------------------------------------------------------------

def test_emotion_train_on_a_table_of_captures(tmp_path, capsys):
    """Six labelled captures whose expression encodes the label: the trained model is
    written, loads, and separates the classes of held-out frames."""
    from emoca_blender.emotion.mlp import EmotionMLP

    rng = np.random.default_rng(0)
    rows = ["capture,valence,arousal,label,start,end"]
    labels = ("happy", "sad")
    for c in range(6):
        lab = labels[c % 2]
        e = rng.random((40, 52)) * 0.2
        e[:, 0 if lab == "happy" else 1] += 0.7          # the class lives in one channel
        p = synthetic_capture(tmp_path / f"c{c}.capture.npz", np.zeros((40, 4), np.float32),
                              expression=np.clip(e, 0, 1), seed=c)
        v, a = (0.8, 0.5) if lab == "happy" else (-0.6, -0.2)
        rows.append(f"{p.name},{v},{a},{lab},0,{30 if c == 0 else ''}")
    table = tmp_path / "table.csv"
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "emo.pt"
    rc, text, err = run(capsys, "emotion-train", table, "-o", out, "--hidden", 64,
                        "--max-epochs", 80, "--patience", 80, "--seed", 1)
    assert rc == 0, err
    assert f"wrote {out}" in text and "230 frames" in text     # 30 + 5 x 40 frames
    mlp = EmotionMLP.load(out)
    assert mlp.class_names == labels and len(mlp.input_names) == 52 + 3
    assert len(mlp.history) == 80
    x = np.concatenate([np.zeros((20, 0)), np.clip(rng.random((20, 52)) * 0.2, 0, 1),
                        np.full((20, 3), 0.05)], 1)
    x[:10, 0] += 0.7
    x[10:, 1] += 0.7
    pred = mlp.predict(x.astype(np.float32))
    assert np.mean(pred["label"] == np.r_[np.zeros(10), np.ones(10)]) >= 0.9
    assert pred["valence"][:10].mean() > pred["valence"][10:].mean()


def test_emotion_train_bad_input(tmp_path, capsys):
    p = synthetic_capture(tmp_path / "c.capture.npz", np.zeros((5, 4), np.float32))
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("capture,label\nc.capture.npz,happy\n")
    bad_number = tmp_path / "n.csv"
    bad_number.write_text(f"capture,valence,arousal,label\n{p.name},high,0.1,happy\n")
    missing = tmp_path / "m.csv"
    missing.write_text("capture,valence,arousal,label\nnope.capture.npz,0.1,0.1,happy\n")
    for args, words in (((tmp_path / "none.csv",), "not found"),
                        ((bad_header,), "columns"),
                        ((bad_number,), "must be numbers"),
                        ((missing,), "line 2"),
                        ((p, "--val-fraction", 1.5), "--val-fraction")):
        rc, out, err = run(capsys, "emotion-train", *args, "-o", tmp_path / "o.pt")
        assert rc == 2, (args, err)
        assert words in one_line_error(err), (args, err)
    assert not (tmp_path / "o.pt").exists()


# -- emotion-predict ----------------------------------------------------------------------

def tiny_mlp(path: Path, input_names, classes=("happy", "sad", "neutral"), seed: int = 0):
    """An untrained (random) emotion MLP with hidden width 16, saved to ``path``."""
    import torch

    from emoca_blender.emotion.mlp import EmotionMLP, build_mlp

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    d = len(input_names)
    mlp = EmotionMLP(build_mlp(d, len(classes), hidden=16).eval(),
                     rng.random(d).astype(np.float32) * 0.5,
                     rng.random(d).astype(np.float32) + 0.5, tuple(classes),
                     tuple(input_names))
    mlp.save(path)
    return EmotionMLP.load(path)


def _input_names(cap_path: Path, use_jaw: bool = True):
    from emoca_blender.emotion.mlp import capture_inputs

    return capture_inputs(load_capture(cap_path), use_jaw)[1]


def test_emotion_predict_writes_valence_and_arousal(tmp_path, capsys):
    """The written curves are the MLP's predictions on the capture's valid frames; frames
    without a face hold the nearest prediction (the format holds no NaN); -o leaves the
    input as it was, and without -o the capture is rewritten in place."""
    from emoca_blender.emotion.mlp import capture_inputs

    valid = np.ones(30, bool)
    valid[[0, 1, 12, 13, 14, 29]] = False
    src = synthetic_capture(tmp_path / "c.capture.npz", np.zeros((30, 4), np.float32),
                            valid=valid, seed=4)
    before = src.read_bytes()
    model = tmp_path / "emo.pt"
    mlp = tiny_mlp(model, _input_names(src))
    want = mlp.predict(capture_inputs(load_capture(src), True)[0])

    def check(path, jaw=True):
        b = load_capture(path)
        for k in ("valence", "arousal"):
            np.testing.assert_allclose(b[k][valid], want[k][valid], atol=1e-5)
            assert np.ptp(b[k][valid]) > 1e-4 and np.all(np.isfinite(b[k]))
            held = b[k]                            # 0,1 <- 2; 12..14 <- 11; 29 <- 28
            assert held[0] == held[1] == held[2] and held[12] == held[13] == held[14] \
                == held[11] and held[29] == held[28]
        rec = b.meta["emotion_mlp"]
        assert rec == {"model": str(model.resolve()), "classes": ["happy", "sad", "neutral"],
                       "jaw": jaw}
        a = load_capture(src) if path != src else None
        if a is not None:
            for k in a.arrays:
                np.testing.assert_array_equal(a[k], b[k])
        return b

    out = tmp_path / "o.capture.npz"
    rc, text, err = run(capsys, "emotion-predict", src, "--model", model, "-o", out)
    assert rc == 0, err
    assert f"wrote {out}: valence and arousal predicted for 24 of 30 frames" in text
    assert f"mean valence {want['valence'][valid].mean():+.3f}" in text
    check(out)
    assert src.read_bytes() == before and "valence" not in load_capture(src)
    # -o without the suffix gets .capture.npz, like the other commands
    rc, _, err = run(capsys, "emotion-predict", src, "--model", model, "-o", tmp_path / "p")
    assert rc == 0, err
    check(tmp_path / "p.capture.npz")
    # in place, with --progress json: one "done" line naming the output
    rc, text, err = run(capsys, "--progress", "json", "emotion-predict", src, "--model", model)
    assert rc == 0, err
    lines = [json.loads(ln) for ln in text.strip().splitlines()]
    done = lines[-1]
    assert done["stage"] == "done" and done["output"] == str(src)
    assert done["frames"] == 30 and done["predicted"] == 24 and done["jaw"] is True
    assert done["mean_arousal"] == pytest.approx(want["arousal"][valid].mean(), abs=1e-4)
    assert src.read_bytes() != before
    b = check(src)
    assert b.meta["valid_frames"] == 24 and "valence" in b.meta["fields"]
    assert not list(tmp_path.glob(".*"))           # no temporary files left behind
    # a model trained without the jaw predicts from identity + expression only
    nojaw = tmp_path / "nojaw.pt"
    mlp2 = tiny_mlp(nojaw, _input_names(src, use_jaw=False), classes=("a", "b"), seed=2)
    rc, _, err = run(capsys, "emotion-predict", src, "--model", nojaw, "-o", out)
    assert rc == 0, err
    want = mlp2.predict(capture_inputs(load_capture(src), False)[0])
    b = load_capture(out)
    np.testing.assert_allclose(b["valence"][valid], want["valence"][valid], atol=1e-5)
    assert b.meta["emotion_mlp"]["jaw"] is False and b.meta["emotion_mlp"]["classes"] == ["a", "b"]


class _Evil:
    """Unpickling calls Path.touch(path): what a hostile .pt could do instead."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.path),))


def test_emotion_predict_bad_input(tmp_path, capsys):
    """Mismatched inputs, bad or missing model files and non-captures: exit 2, one line,
    nothing written and the input untouched."""
    import torch

    src = synthetic_capture(tmp_path / "c.capture.npz", np.zeros((8, 4), np.float32))
    before = src.read_bytes()
    names = _input_names(src)                        # 52 ARKit expression + jaw, no identity
    other_head = tmp_path / "flame.pt"               # 3 identity + 52 + jaw
    tiny_mlp(other_head, tuple(f"shape{i}" for i in range(3)) + names)
    other_basis = tmp_path / "basis.pt"              # as many inputs, other expression names
    tiny_mlp(other_basis, tuple(f"exp{i}" for i in range(52)) + names[-3:])
    text_pt = tmp_path / "notes.pt"
    text_pt.write_text("not a model\n")
    keyless = tmp_path / "keyless.pt"
    torch.save({"weights": torch.zeros(3)}, keyless)
    tensor_pt = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_pt)
    good = tmp_path / "good.pt"
    mlp = tiny_mlp(good, names)
    mlp.input_names = ()
    no_names = mlp.save(tmp_path / "no_names.pt")
    not_capture = tmp_path / "x.capture.npz"
    not_capture.write_text("hello\n")
    # a file whose unpickling would run code: refused by the weights-only loader, never run
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil(str(marker)), "mean": 0}, evil)
    out = tmp_path / "o.capture.npz"
    cases = [
        ((src, "--model", evil), "evil.pt is not an emotion MLP"),
        ((src, "--model", other_head), "takes 58 inputs (3 identity + 52 expression + jaw) "
                                       "but the capture gives 55 (0 identity + 52 expression "
                                       "+ jaw): the model was trained on captures of another "
                                       "backend or head model"),
        ((src, "--model", other_basis), "input 0 is 'exp0' in the model, 'eyeBlinkLeft' in"),
        ((src, "--model", tmp_path / "gone.pt"), "gone.pt not found"),
        ((src, "--model", text_pt), "notes.pt is not an emotion MLP"),
        ((src, "--model", keyless), "it holds ['weights']"),
        ((src, "--model", tensor_pt), "tensor.pt is not an emotion MLP"),
        ((src, "--model", no_names), "records no input names"),
        ((not_capture, "--model", good), "x.capture.npz"),
        ((tmp_path / "gone.capture.npz", "--model", good), "not found"),
    ]
    for args, words in cases:
        for extra in (("-o", out), ()):
            rc, text, err = run(capsys, "emotion-predict", *args, *extra)
            assert rc == 2, (args, extra, text, err)
            assert words in one_line_error(err), (args, err)
            assert not out.exists()
    assert src.read_bytes() == before
    assert not marker.exists()
    assert not_capture.read_text() == "hello\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".npz") == \
        ["c.capture.npz", "x.capture.npz"]
    assert not list(tmp_path.glob(".*"))


def test_emotion_predict_exit_code_end_to_end(tmp_path):
    """A real subprocess: a mismatched model gives exit code 2 and one line on stderr."""
    src = synthetic_capture(tmp_path / "c.capture.npz", np.zeros((6, 4), np.float32))
    model = tmp_path / "flame.pt"
    tiny_mlp(model, tuple(f"shape{i}" for i in range(100)) + _input_names(src))
    r = run_cli("emotion-predict", src, "--model", model, timeout=120)
    assert r.returncode == 2, r.stderr
    line = one_line_error(r.stderr)
    assert "takes 155 inputs" in line and "gives 55" in line and "emotion-train" in line


# -- capture --no-emotion and refine (a real clip) ------------------------------------------

@pytest.fixture(scope="module")
def demo_captures(tmp_path_factory, demo_clip):
    """The demo clip's first 24 frames captured with and without emotion (subprocess: the
    real exit code and output)."""
    tmp = tmp_path_factory.mktemp("emo_cli")
    out = {}
    for name, extra in (("with", ()), ("without", ("--no-emotion",))):
        p = tmp / f"{name}.capture.npz"
        r = run_cli("capture", demo_clip, "-o", p, "--end", 24, "--no-cache", *extra)
        assert r.returncode == 0, r.stderr
        out[name] = p
    return out


@needs_fer
def test_capture_no_emotion_flag(demo_captures):
    a, b = load_capture(demo_captures["with"]), load_capture(demo_captures["without"])
    assert "emotion_probs" in a and a["emotion_probs"].shape == (24, 7)
    assert a.names["emotion_probs"] == emotion.CLASS_NAMES
    assert a.meta["settings"]["emotion"] is True
    assert "emotion_probs" not in b and "emotion_features" not in b
    assert b.meta["settings"]["emotion"] is False and b.meta["emotion"] is None
    np.testing.assert_allclose(a["expression"], b["expression"], atol=1e-6)


@needs_fer
def test_refine_command_writes_a_refined_capture(demo_captures, demo_clip, tmp_path, capsys):
    src = demo_captures["with"]
    out = tmp_path / "refined.capture.npz"
    rc, text, err = run(capsys, "refine", src, "-o", out, "--video", demo_clip,
                        "--frames", "6,18", "--iterations", 4, "--strength", 0.5)
    assert rc == 0, err
    assert "2 keyframes refined" in text
    a, b = load_capture(src), load_capture(out)
    free = np.array([not n.startswith(("jaw", "eyeLook")) for n in ARKIT_NAMES])
    np.testing.assert_allclose(b["expression"][:, ~free], a["expression"][:, ~free], atol=1e-6)
    np.testing.assert_allclose(b["arkit"], b["expression"], atol=1e-6)   # ARKit basis
    info = b.meta["emotion_refine"]
    assert info["settings"]["strength"] == 0.5 and info["settings"]["frames"] == [6, 18]
    s = info["summary"]
    assert s["frames"] == 2 and s["skipped"] == 0
    assert 0 < s["feat_dist_after"] < 10 and 0 < s["lmk_err_after"] < 50
    d = np.abs(b["expression"] - a["expression"]).max(1)
    assert d[[6, 18]].max() > 0                  # keyframes changed
    assert d[12] > 0 and d[0] == pytest.approx(d[6]) # interpolated between, held outside
    for k in ("landmarks2d", "head_rotation", "jaw", "emotion_probs"):
        np.testing.assert_array_equal(a[k], b[k])


@needs_fer
def test_refine_bad_input(demo_captures, tmp_path, capsys):
    src = demo_captures["with"]
    out = tmp_path / "r.capture.npz"
    for args, words in ((("--frames", "3,99"), "0..23"),
                        (("--frames", "a,b"), "--frames"),
                        (("--strength", "1.5"), "--strength"),
                        (("--video", tmp_path / "gone.mp4"), "--video"),
                        (("--keyframes", "0"), "--keyframes")):
        rc, _, err = run(capsys, "refine", src, "-o", out, *args)
        assert rc == 2, (args, err)
        assert words in one_line_error(err), (args, err)
    assert not out.exists()


@needs_fer
def test_refine_reports_frames_without_a_face(demo_captures, demo_clip, tmp_path):
    """A keyframe without a measured face is skipped and reported (subprocess: the real
    exit code and stdout)."""
    cap = load_capture(demo_captures["with"])
    cap.arrays["valid"] = cap["valid"].copy()
    cap.arrays["valid"][10] = False
    src = save_capture(cap, tmp_path / "holed.capture.npz")
    out = tmp_path / "r.capture.npz"
    r = run_cli("refine", src, "-o", out, "--video", demo_clip, "--frames", "10",
                "--iterations", 2)
    assert r.returncode == 0, r.stderr
    assert "nothing refined" in r.stdout and "skipped 1 frame(s)" in r.stdout
    assert load_capture(out).meta["emotion_refine"]["summary"]["skipped_frames"] == [10]
    np.testing.assert_array_equal(load_capture(out)["expression"], cap["expression"])
