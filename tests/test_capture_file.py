"""The Capture file: schema, validation, atomic writes, completeness."""
import json
import os

import numpy as np
import pytest

from emoca_blender import capture_file as cf
from emoca_blender.arkit import ARKIT_NAMES, INDEX, MIRROR_INDEX, from_mediapipe


def synthetic(n=20, k=52, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "valid": np.ones(n, bool), "interpolated": np.zeros(n, bool),
        "timestamps": np.arange(n) / 25.0,
        "bbox": rng.uniform(0, 100, (n, 4)), "landmarks2d": rng.uniform(0, 100, (n, 478, 2)),
        "landmarks3d": rng.normal(size=(n, 478, 3)) * 0.05,
        "head_rotation": rng.normal(size=(n, 3)) * 0.1, "head_translation": rng.normal(size=(n, 3)),
        "jaw": rng.normal(size=(n, 3)) * 0.1, "eyes": rng.normal(size=(n, 2, 3)) * 0.1,
        "blinks": rng.uniform(0, 1, (n, 2)), "expression": rng.uniform(0, 1, (n, k)),
        "arkit": rng.uniform(0, 1, (n, 52)), "shape": np.zeros(0),
    }
    meta = {"fps": 25.0, "width": 640, "height": 360}
    return cf.make_capture(arrays, meta, {"expression": ARKIT_NAMES[:k]})


def test_roundtrip_keeps_arrays_names_and_meta(tmp_path):
    cap = synthetic()
    p = cf.save_capture(cap, tmp_path / "a.capture.npz")
    assert cf.is_complete(p)
    side = json.loads(cf.sidecar_path(p).read_text())
    assert side["schema_version"] == cf.SCHEMA_VERSION and side["frame_count"] == 20
    back = cf.load_capture(p)
    for k, v in cap.arrays.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == v.dtype
    assert back.names["arkit"] == ARKIT_NAMES
    assert back.names["expression"] == ARKIT_NAMES
    assert back.names["bbox"] == ("x0", "y0", "x1", "y1")
    np.testing.assert_array_equal(back.column("arkit", "jawOpen"), cap["arkit"][:, INDEX["jawOpen"]])
    assert back.fps == 25.0


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.pop("jaw"), "missing field 'jaw'"),
    (lambda a: a.__setitem__("arkit", np.zeros((20, 51), np.float32)), "arkit has shape"),
    (lambda a: a.__setitem__("jaw", np.zeros((19, 3), np.float32)), "N=19"),
    (lambda a: a["head_rotation"].__setitem__((3, 1), np.nan), "head_rotation holds 1 NaN"),
    (lambda a: a.__setitem__("valid", np.ones(20, np.float32)), "valid has dtype float32"),
    (lambda a: a["arkit"].__setitem__((0, 0), 1.5), "outside [0, 1]"),
])
def test_validation_names_the_problem(mutate, message):
    cap = synthetic()
    mutate(cap.arrays)
    with pytest.raises(cf.CaptureError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cf.validate(cap)


def test_expression_needs_column_names():
    cap = synthetic()
    cap.names.pop("expression")
    with pytest.raises(cf.CaptureError, match="expression has no column names"):
        cf.validate(cap)


def test_incomplete_or_tampered_files_are_refused(tmp_path):
    p = cf.save_capture(synthetic(), tmp_path / "b.capture.npz")
    side = cf.sidecar_path(p)
    data = p.read_bytes()
    # truncated npz (a write cut short): the hash no longer matches the sidecar
    p.write_bytes(data[: len(data) // 2])
    assert not cf.is_complete(p)
    with pytest.raises(cf.CaptureError, match="does not match its sidecar"):
        cf.load_capture(p)
    with pytest.raises(cf.CaptureError, match="not a readable capture"):
        cf.load_capture(p, check_sidecar=False)
    # no sidecar: never taken as complete
    p.write_bytes(data)
    side.unlink()
    assert not cf.is_complete(p)
    with pytest.raises(cf.CaptureError, match="no sidecar"):
        cf.load_capture(p)


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    p = tmp_path / "c.capture.npz"
    cf.save_capture(synthetic(seed=1), p)
    before = p.read_bytes()

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        cf.atomic_write_bytes(p, boom)
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.capture.json", "c.capture.npz"]


def test_not_a_capture(tmp_path):
    p = tmp_path / "x.capture.npz"
    np.savez(p, foo=np.zeros(3))
    with pytest.raises(cf.CaptureError, match="no metadata"):
        cf.load_capture(p, check_sidecar=False)


def test_settings_key_depends_on_everything():
    a = cf.settings_key("h1", "mediapipe", {"filter": 0.5})
    assert a == cf.settings_key("h1", "mediapipe", {"filter": 0.5})
    assert a != cf.settings_key("h2", "mediapipe", {"filter": 0.5})
    assert a != cf.settings_key("h1", "emoca", {"filter": 0.5})
    assert a != cf.settings_key("h1", "mediapipe", {"filter": 0.6})


def test_arkit_tables():
    assert len(ARKIT_NAMES) == 52
    assert ARKIT_NAMES[MIRROR_INDEX[INDEX["eyeBlinkLeft"]]] == "eyeBlinkRight"
    assert ARKIT_NAMES[MIRROR_INDEX[INDEX["jawLeft"]]] == "jawRight"
    assert ARKIT_NAMES[MIRROR_INDEX[INDEX["jawOpen"]]] == "jawOpen"
    names = ["_neutral", "jawOpen", "eyeBlinkLeft"]
    w = from_mediapipe(names, np.array([[0.9, 0.3, 0.7]]))
    assert w.shape == (1, 52) and w[0, INDEX["jawOpen"]] == pytest.approx(0.3)
    assert w[0, INDEX["eyeBlinkLeft"]] == pytest.approx(0.7) and w.sum() == pytest.approx(1.0)
