"""The capture cache is keyed by what made the capture: the video's content, the backend,
the settings and the add-on's own code and bundled models. A capture cached by another
version of the add-on (before an update that changed the solve) must be recomputed, not
served as this version's."""
import shutil

import numpy as np

from conftest import ROOT
from emoca_blender.capture import pipeline
from emoca_blender.capture.pipeline import CaptureSettings, run_capture


def test_code_version_follows_the_sources_and_models(tmp_path):
    pkg, models = tmp_path / "emoca_blender", tmp_path / "bundled_models"
    shutil.copytree(ROOT / "emoca_blender" / "capture", pkg / "capture",
                    ignore=shutil.ignore_patterns("__pycache__"))
    models.mkdir()
    (models / "head.npz").write_bytes(b"model v1")
    v1 = pipeline.code_version(pkg, models)
    assert v1 == pipeline.code_version(pkg, models)
    solve = pkg / "capture" / "solve.py"
    text = solve.read_text()
    solve.write_text(text.replace("LIDS_TOUCH, LIDS_NEAR = 0.12", "LIDS_TOUCH, LIDS_NEAR = 0.13"))
    v2 = pipeline.code_version(pkg, models)
    assert v2 != v1                                             # a changed solve
    solve.write_text(text)
    assert pipeline.code_version(pkg, models) == v1             # by content, not by time
    (models / "head.npz").write_bytes(b"model v2")
    assert pipeline.code_version(pkg, models) not in (v1, v2)   # a rebuilt model
    assert pipeline.code_version() != v1                        # this installation's own


def test_a_capture_cached_by_other_code_is_recomputed(tmp_path, demo_clip, monkeypatch):
    s, cache = CaptureSettings(emotion=False), tmp_path / "cache"
    a = run_capture(demo_clip, tmp_path / "a.capture.npz", s, cache_dir=cache)
    b = run_capture(demo_clip, tmp_path / "b.capture.npz", s, cache_dir=cache)
    assert not a.cached and b.cached
    monkeypatch.setattr(pipeline, "code_version", lambda: "an update of the add-on")
    c = run_capture(demo_clip, tmp_path / "c.capture.npz", s, cache_dir=cache)
    assert not c.cached
    np.testing.assert_array_equal(c.capture["arkit"], a.capture["arkit"])
    assert c.capture.meta["cache_key"] != a.capture.meta["cache_key"]


def test_a_model_replaced_at_the_same_path_is_another_key(tmp_path):
    """The EMOCA checkpoint and the FLAME folder are the user's files: a new download saved
    over the old one (same path) must not be served the old model's cached captures."""
    import os

    ckpt = tmp_path / "emoca.ckpt"
    ckpt.write_bytes(b"weights v1")
    flame = tmp_path / "flame"
    flame.mkdir()
    (flame / "generic_model.pkl").write_bytes(b"flame 2020")
    s = CaptureSettings(backend="emoca", emoca_checkpoint=str(ckpt), flame_dir=str(flame))
    k1 = s.key_dict()
    assert k1 == s.key_dict()
    ckpt.write_bytes(b"weights v2, longer")
    k2 = s.key_dict()
    assert k2 != k1
    st = (flame / "generic_model.pkl").stat()
    (flame / "generic_model.pkl").write_bytes(b"flame 2023")      # same size, new time
    os.utime(flame / "generic_model.pkl", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert s.key_dict() != k2
    assert CaptureSettings().key_dict()["emoca_checkpoint"] == ""  # none given: unchanged


def _entry(folder, name, size, age_s):
    """A cache entry (capture + sidecar) of ``size`` bytes, last used ``age_s`` seconds ago."""
    import os
    import time

    npz, side = folder / f"{name}.capture.npz", folder / f"{name}.capture.json"
    npz.write_bytes(b"\0" * size)
    side.write_text("{}")
    t = time.time() - age_s
    os.utime(npz, (t, t))
    return npz, side


def test_prune_removes_least_recently_used_entries_first(tmp_path):
    old, _ = _entry(tmp_path, "old", 1000, 300)
    mid, _ = _entry(tmp_path, "mid", 1000, 200)
    new, _ = _entry(tmp_path, "new", 1000, 100)
    big, _ = _entry(tmp_path, "just_written", 5000, 400)     # oldest time, but kept
    part = tmp_path / ".new.capture.npz.x1.part"              # a writer's temporary file
    part.write_bytes(b"\0" * 9000)
    removed = pipeline.prune_cache(tmp_path, 7200, keep=big)
    assert removed == [old]
    assert not old.exists() and not (tmp_path / "old.capture.json").exists()
    assert mid.exists() and new.exists() and big.exists() and part.exists()
    assert pipeline.prune_cache(tmp_path, 0, keep=big) == [mid, new]
    assert big.exists() and (tmp_path / "just_written.capture.json").exists()
    assert pipeline.prune_cache(tmp_path / "none", 0) == []


def test_cache_stays_within_its_limit_and_a_hit_counts_as_use(tmp_path, demo_clip,
                                                              long_demo_clip, monkeypatch):
    import os

    cache = tmp_path / "cache"
    s = CaptureSettings(emotion=False)
    a = run_capture(demo_clip, tmp_path / "a.capture.npz", s, cache_dir=cache)
    size = sum(f.stat().st_size for f in cache.iterdir())
    monkeypatch.setenv("EMOCA_BLENDER_CACHE_GB", str(1.5 * size / (1 << 30)))
    entry = next(cache.glob("*.capture.npz"))
    os.utime(entry, (1, 1))                                   # long unused
    assert run_capture(demo_clip, tmp_path / "b.capture.npz", s, cache_dir=cache).cached
    assert entry.stat().st_mtime > 1                          # the hit renewed it
    # a second clip's entry does not fit beside the first: the least recently used goes
    os.utime(entry, (1, 1))
    b = run_capture(long_demo_clip, tmp_path / "c.capture.npz", s, cache_dir=cache)
    assert not b.cached
    names = {f.name for f in cache.glob("*.capture.npz")}
    assert names == {f"{b.capture.meta['cache_key']}.capture.npz"}
    assert a.capture.meta["cache_key"] + ".capture.npz" not in names
