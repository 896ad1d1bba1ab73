"""flame-fit end to end on a real clip, with a synthetic FLAME in the official layout:
``capture --backend flame-fit`` -> a Capture with every field -> ``rig --flame-dir`` ->
the FLAME rig in Blender, whose evaluated mesh at several frames is the core FLAME LBS of
that frame's capture values (identity, expression, head, jaw, eyes) within 1e-4 of the
head's size. Needs ../shared/flame_aux (FLAME's template topology and the MediaPipe
embedding; skipped when absent) and the demo clip."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import flame_synthetic as fs  # noqa: E402
from conftest import run_cli  # noqa: E402

pytest.importorskip("torch")

N_FRAMES = 24


@pytest.fixture(scope="module")
def flame_dir(tmp_path_factory):
    need = ("head_template.obj", "mediapipe_landmark_embedding.npz")
    if any(fs.aux(n) is None for n in need):
        pytest.skip(f"{fs.SHARED_AUX} absent: FLAME auxiliary files are not in the repo")
    d = tmp_path_factory.mktemp("flame")
    fs.write_flame_pickle(d / "generic_model.pkl",
                          fs.make_flame_dict(n_shape=100, n_expr=50,
                                             template=fs.aux("head_template.obj"), seed=5))
    for n in need + ("FLAME_masks.pkl",):
        if fs.aux(n) is not None:
            shutil.copy(fs.aux(n), d / n)          # into the temp folder only
    return d


@pytest.fixture(scope="module")
def capture_path(flame_dir, demo_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("cap") / "actor.capture.npz"
    r = run_cli("capture", demo_clip, "-o", out, "--backend", "flame-fit", "--flame-dir",
                flame_dir, "--end", N_FRAMES, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_capture_has_every_field(capture_path, flame_dir):
    from emoca_blender import capture_file
    from emoca_blender.models import flame
    from emoca_blender.arkit import ARKIT_NAMES

    cap = capture_file.load_capture(capture_path)
    m = flame.load_flame(flame_dir / "generic_model.pkl")
    n = cap.n_frames
    assert n == N_FRAMES and cap["valid"].all()
    assert cap.meta["head_model"] == m.model_id()
    assert cap.names["expression"] == m.expression_names(50)
    for k in capture_file.FIELDS:
        if capture_file.FIELDS[k][2]:
            assert k in cap.arrays and np.all(np.isfinite(cap[k])), k
    assert cap["expression"].shape == (n, 50) and cap["shape"].shape == (100,)
    assert cap["eyes"].shape == (n, 2, 3) and cap["arkit"].shape == (n, len(ARKIT_NAMES))
    # a fitted face, not zeros: the expression moves over the clip (neutral -> smile), the
    # identity is not the template, the head turns a little, the ARKit curves are in [0,1]
    assert np.abs(cap["shape"]).max() > 0.05
    assert cap["expression"].std(0).max() > 0.05
    assert np.abs(cap["head_rotation"]).max() < 1.0
    assert 0 <= cap["arkit"].min() and cap["arkit"].max() <= 1
    ff = cap.meta["backend"]["flame_fit"]      # the fit explains MediaPipe's landmarks
    assert ff["n_shape"] == 100 and ff["n_expr"] == 50
    assert ff["residual_px_median"] < 8.0, ff


def test_flame_rig_from_capture_matches_core_lbs(capture_path, flame_dir, tmp_path):
    bpy = pytest.importorskip("bpy")
    from emoca_blender import capture_file
    from emoca_blender.models import flame
    from operators.scene import rig_build

    blend = tmp_path / "actor.blend"
    r = run_cli("rig", capture_path, "-o", blend, "--flame-dir", flame_dir, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    cap = capture_file.load_capture(capture_path)
    m = flame.load_flame(flame_dir / "generic_model.pkl")
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    try:
        mesh = next(o for o in bpy.data.objects if o.type == "MESH")
        keys = mesh.data.shape_keys.key_blocks
        assert len([k for k in keys if k.name.startswith("exp_")]) == 50
        assert len(mesh.data.uv_layers) == 1                 # head_template.obj UVs
        size = np.linalg.norm(np.ptp(m.v_template, 0))
        worst = 0.0
        for f in (1, 9, N_FRAMES):
            bpy.context.scene.frame_set(f)
            dg = bpy.context.evaluated_depsgraph_get()
            ev = mesh.evaluated_get(dg)
            me = ev.to_mesh()
            co = np.empty(len(me.vertices) * 3, np.float32)
            me.vertices.foreach_get("co", co)
            ev.to_mesh_clear()
            M = np.array(mesh.matrix_world)
            got = co.reshape(-1, 3).astype(np.float64) @ M[:3, :3].T + M[:3, 3]
            i = f - 1
            pose = np.zeros((1, 5, 3))
            pose[0, 0], pose[0, 2], pose[0, 3:] = cap["head_rotation"][i], cap["jaw"][i], \
                cap["eyes"][i]
            v, _ = m.forward(cap["shape"][None].astype(np.float64),
                             cap["expression"][i:i + 1].astype(np.float64), pose)
            worst = max(worst, np.abs(got - rig_build.model_to_blender(v[0])).max())
        assert worst <= 1e-4 * size, (worst, size)
    finally:
        bpy.ops.wm.read_factory_settings(use_empty=True)


def test_rig_of_flame_capture_without_flame_dir_names_the_option(capture_path, tmp_path,
                                                                   monkeypatch):
    monkeypatch.delenv("EMOCA_BLENDER_FLAME_DIR", raising=False)
    r = run_cli("rig", capture_path, "-o", tmp_path / "x.blend",
                env={"EMOCA_BLENDER_FLAME_DIR": ""})
    assert r.returncode != 0 and "--flame-dir" in (r.stderr + r.stdout)


def test_build_rig_operator_builds_the_flame_rig(capture_path, flame_dir, tmp_path):
    """In the installed extension: Build Rig on a FLAME capture asks for the FLAME folder
    when the preferences lack it, and with it builds the FLAME rig (5023 vertices, 50
    expression keys animated over the capture's frames)."""
    import importlib
    import importlib.util

    here = Path(__file__).resolve().parents[1]
    try:
        tx = importlib.import_module("test_extension")
    except ImportError:
        spec = importlib.util.spec_from_file_location("test_extension", here / "test_extension.py")
        tx = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tx)
    zip_path = tx.bx.build(tx.ROOT, tmp_path / "dist")
    res = tx.run_blender_script(tmp_path, '''
        install(enable=True)
        CAP, FLAME = sys.argv[2], sys.argv[3]
        scene = bpy.context.scene
        scene.emoca.capture_path = CAP
        prefs = bpy.context.preferences.addons[MOD].preferences
        prefs.flame_folder = ""
        try:
            no_folder = sorted(bpy.ops.emoca.build_rig())
        except RuntimeError as e:
            no_folder = str(e)
        prefs.flame_folder = FLAME
        built = sorted(bpy.ops.emoca.build_rig())
        mesh = scene.emoca.actor_mesh
        keys = mesh.data.shape_keys
        ad = keys.animation_data
        n_curves = sum(len(bag.fcurves) for layer in ad.action.layers
                       for strip in layer.strips for bag in strip.channelbags)
        result(dict(no_folder=no_folder, built=built, n_verts=len(mesh.data.vertices),
                    n_keys=len(keys.key_blocks), n_curves=n_curves))
    ''', str(zip_path), str(capture_path), str(flame_dir))
    assert "FLAME folder" in str(res["no_folder"])
    assert res["built"] == ["FINISHED"]
    assert res["n_verts"] == 5023
    assert res["n_keys"] >= 51 and res["n_curves"] >= 50      # basis + 50 expression keys
