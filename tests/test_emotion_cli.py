"""The emotion commands of the CLI: ``capture --no-emotion``, ``emotion-train``, ``retrieve``
and ``refine`` -- their help, results and one-line bad-input errors (exit code 2).

Most calls run ``cli.main`` in this process (the CLI's own entry point, without paying
for a fresh interpreter each time); one real subprocess checks the exit code end to end.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

from emoca_blender import cli, emotion
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
    from emoca_blender.emotion_mlp import EmotionMLP

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
