"""The emoca backend end to end, with a synthetic EMOCA checkpoint and a synthetic FLAME (on
FLAME's topology, with the shared MediaPipe embedding and UVs), on every clip in
../shared/media (the first FRAMES frames of each, to stay lean: the plumbing is the same for
every frame), then in Blender: the FLAME rig whose material plays the displacement sequence.
Plus the bad inputs: CUDA asked for without one, faces too small for the crop, no checkpoint.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import emoca_synthetic as es  # noqa: E402
from conftest import run_cli, shared_clips  # noqa: E402

from emoca_blender import capture_file
from emoca_blender.models import displacement, emoca_crop  # noqa: E402
from emoca_blender.backends import emoca_backend as EB  # noqa: E402
from emoca_blender.errors import BadInput  # noqa: E402

FRAMES = 8
CLIPS = shared_clips()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)      # the CI machine is small and shared
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def assets():
    if not es.flame_aux_available():
        pytest.skip("../shared/flame_aux is absent: FLAME's MediaPipe embedding and UVs are "
                    "not in the repository")
    return {"ckpt": es.cached("emoca"), "flame": es.cached("flame")}


def settings(assets, **kw):
    from emoca_blender.capture.pipeline import CaptureSettings

    base = dict(backend="emoca", end=FRAMES, emotion=False, flame_dir=str(assets["flame"]),
                emoca_checkpoint=str(assets["ckpt"]))
    base.update(kw)
    return CaptureSettings(**base)


# -------------------------------------------------------------------- pure functions
def test_camera_to_translation_agrees_with_decas_projection():
    rng = np.random.default_rng(0)
    W, H = 1920, 1080
    cam = np.array([[9.0, 0.01, -0.02], [7.5, -0.03, 0.04]])
    M = np.stack([emoca_crop.crop_matrix((900 + 40 * i, 500), 380 + 60 * i) for i in range(2)])
    t = EB.camera_to_translation(cam, M, W, H)
    f = max(W, H)
    for i in range(2):
        for X in (np.zeros(3), np.array([0.05, -0.03, 0.0])):
            # DECA: crop pixel of X = ((s (X + t)) * (1, -1) + 1) * 112, then back to the image
            crop = (cam[i, 0] * (X[:2] + cam[i, 1:]) * np.array([1, -1]) + 1) * 112
            img = emoca_crop.crop_to_image(M[i], crop)
            # pinhole: x right, y up, camera looking down -z; depth -t_z, focal f
            P = X + t[i]
            pin = np.array([W / 2 + f * P[0] / -P[2], H / 2 - f * P[1] / -P[2]])
            assert np.allclose(img, pin, atol=1e-6), (img, pin)
    assert (t[:, 2] < 0).all()
    assert rng is not None


def test_cuda_requested_without_cuda_falls_back_with_a_warning():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: nothing to fall back from")
    dev, warn = EB.resolve_device("cuda")
    assert dev == "cpu" and "CUDA was requested" in warn and "CPU" in warn
    assert EB.resolve_device("auto") == ("cpu", None)
    assert EB.resolve_precision("cuda") == "fp16" and EB.resolve_precision("cpu") == "fp32"
    with pytest.raises(BadInput, match="device must be"):
        EB.resolve_device("tpu")


def test_missing_checkpoint_or_flame_is_bad_input(tmp_path, monkeypatch, shared_media):
    monkeypatch.delenv(EB.CHECKPOINT_ENV, raising=False)
    r = run_cli("capture", shared_media[0], "-o", tmp_path / "x.capture.npz", "--backend",
                "emoca", "--no-cache", timeout=300)
    assert r.returncode == 2, r.stderr
    assert "--emoca-checkpoint" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(BadInput, match="--flame-dir"):
        monkeypatch.delenv(EB.FLAME_ENV, raising=False)
        EB.EmocaBackend(checkpoint=es.cached("emoca"))


# -------------------------------------------------------------------- end to end
def _check_capture(cap, n_expected):
    assert cap.n_frames == n_expected
    for f in ("valid", "bbox", "landmarks2d", "landmarks3d", "head_rotation", "head_translation",
              "jaw", "eyes", "blinks", "expression", "arkit", "shape", "detail", "camera",
              "light"):
        assert f in cap, f
        assert np.all(np.isfinite(cap[f])), f
    assert cap["shape"].shape == (100,) and cap["expression"].shape[1] == 50
    assert cap["detail"].shape[1] == 128 and cap["light"].shape[1:] == (9, 3)
    assert cap.names["expression"][0] == "exp_000"
    assert cap.meta["head_model"].startswith("FLAME-100x50-")
    v = cap["valid"]
    assert v.any()
    # the synthetic network's camera scale is ~9 (see emoca_synthetic): weak perspective kept
    assert np.allclose(cap["camera"][v, 0], 9.0, atol=0.5)
    assert (cap["head_translation"][v, 2] < 0).all()
    assert 0.0 <= cap["arkit"].min() and cap["arkit"].max() <= 1.0
    e = cap.meta["backend"]["emoca"]
    assert e["device"] == "cpu" and e["precision"] == "fp32" and e["kind"] == "emoca"


def _check_sequence(cap, path):
    folder = displacement.sequence_dir(path)
    m = displacement.read_manifest(folder)
    files = sorted(folder.glob("disp_*.png"))
    assert m["frames"] == cap.n_frames == len(files)
    first = int(cap.meta["frame_start"])
    assert [f.name for f in files] == [f"disp_{first + i:06d}.png" for i in range(cap.n_frames)]
    assert m["valid_frames"] == int(cap["valid"].sum())       # every valid frame has its map
    assert displacement.is_complete(path)
    return folder, m


def test_end_to_end_every_clip_then_blender(assets, shared_media, tmp_path):
    from emoca_blender.capture.pipeline import run_capture

    ck = EB.load_checkpoint_cached(assets["ckpt"])
    runner = EB.Runner(ck.net, "cpu", "fp32", channels_last=False)
    done = []
    for clip in shared_media:
        out = tmp_path / f"{clip.stem}.capture.npz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)     # small-face notes on LRS3
            res = run_capture(clip, out, settings(assets), cache_dir=None)
        cap = capture_file.load_capture(out)
        _check_capture(cap, FRAMES)
        folder, m = _check_sequence(cap, out)
        # a map is D_detail of the capture's (filtered) jaw, expression and detail + fixed
        i = int(np.flatnonzero(cap["valid"])[-1])
        assert ck.face_eye_mask is not None and 0 < ck.face_eye_mask.mean() < 1
        want = runner.decode_detail(cap["jaw"][i:i + 1], cap["expression"][i:i + 1],
                                    cap["detail"][i:i + 1])[0] * ck.face_eye_mask \
            + ck.fixed_displacement
        got = displacement.read_map(folder / m["pattern"].format(m["first"] + i))
        assert np.abs(got - want).max() <= 2 * displacement.RANGE_M / 65535 + 1e-7
        assert res.timings["after_capture"] > 0
        done.append((clip, out, cap))
    _blender_part(assets, done)


def _blender_part(assets, done):
    bpy = pytest.importorskip("bpy")
    from emoca_blender.models import flame
    from operators.scene import displacement_material as dm
    from operators.scene import rig_build

    a = flame.load_assets(assets["flame"])
    for clip, path, cap in done:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        hm = flame.head_model_for_capture(a.model, cap, n_expr=50, uv_coords=a.uv_coords,
                                          uv_faces=a.uv_faces)
        start = 1
        mesh, arm, _ = rig_build.build_flame_rig(hm, cap, "FLAME", frame_start=start)
        mat = dm.apply_to_rig(mesh, path, frame_start=start)
        scene = bpy.context.scene
        tex = next(n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
        iu = tex.image_user
        m = displacement.read_manifest(displacement.sequence_dir(path))
        # the image node's frame settings against the clip
        assert tex.image.source == "SEQUENCE"
        assert tex.image.colorspace_settings.name == "Non-Color"
        assert iu.frame_duration == cap.n_frames == scene.frame_end - scene.frame_start + 1
        assert iu.frame_start == scene.frame_start == start
        assert iu.frame_offset == int(cap.meta["frame_start"]) - 1
        assert iu.use_auto_refresh and not iu.use_cyclic
        for F in (scene.frame_start, scene.frame_start + 3, scene.frame_end):
            i = F - start                                    # captured frame shown at F
            iu.frame_current = dm.frame_for_scene(iu, F)
            p = Path(bpy.path.abspath(tex.image.filepath_from_user(image_user=iu)))
            assert p.name == m["pattern"].format(m["first"] + i) and p.is_file()
        # Cycles displaces, EEVEE bumps, both from the same sequence
        outs = {n.target: n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeOutputMaterial"}
        assert outs["CYCLES"].inputs["Displacement"].is_linked
        assert outs["EEVEE"].inputs["Surface"].links[0].from_node.inputs["Normal"].is_linked
        assert mat.displacement_method == "BOTH"
        disp = next(n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeDisplacement")
        assert disp.inputs["Scale"].default_value == pytest.approx(2 * displacement.RANGE_M)
        assert mesh.data.uv_layers.get("UVMap") is not None
        assert mesh.data.materials[0] == mat
    # the CLI's rig path (`rig --flame-dir`, `run`) gives the same rig its displacement maps
    from operators.scene import cli_scene

    clip, path, cap = done[0]
    cli_scene.new_scene()
    mesh, arm = cli_scene.build_actor(cap, flame_dir=str(assets["flame"]), capture_path=path)
    mat = mesh.data.materials[0]
    tex = next(n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
    assert tex.image.source == "SEQUENCE" and tex.image_user.frame_duration == cap.n_frames


# -------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small_clip(tmp_path_factory, shared_media):
    """A clip whose face is too small for a 224 crop: an LRS3 clip shrunk to 120x120."""
    import cv2

    src = next((c for c in shared_media if c.parent.name == "lrs3"), shared_media[0])
    out = tmp_path_factory.mktemp("small") / "small_face.mp4"
    cap = cv2.VideoCapture(str(src))
    w = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (120, 120))
    for _ in range(FRAMES):
        ok, fr = cap.read()
        if not ok:
            break
        w.write(cv2.resize(fr, (120, 120), interpolation=cv2.INTER_AREA))
    cap.release()
    w.release()
    return out


def test_small_faces_and_cuda_request_warn_but_run(assets, small_clip, tmp_path):
    from emoca_blender.capture.pipeline import run_capture

    import io

    from emoca_blender.capture.progress import Progress

    out = tmp_path / "small.capture.npz"
    lines = io.StringIO()
    with pytest.warns(RuntimeWarning) as rec:
        run_capture(small_clip, out, settings(assets, device="cuda"),
                    Progress("json", out=lines, err=io.StringIO()), cache_dir=None)
    msgs = " | ".join(str(w.message) for w in rec)
    # the first progress line says where the networks run (what Check Device says)
    first = json.loads(lines.getvalue().splitlines()[0])
    assert first["stage"] == "message" and first["message"].startswith("device: ")
    assert f"torch {torch.__version__}" in first["message"]
    if not torch.cuda.is_available():
        assert "CUDA was requested" in msgs
        assert first["message"].startswith("device: CPU (no GPU: ")
    assert "small for EMOCA's 224x224 crop" in msgs and "upsampled" in msgs
    cap = capture_file.load_capture(out)
    e = cap.meta["backend"]["emoca"]
    assert e["crop_side_px_median"] < 224 and e["frames_upsampled"] > 0
    assert any("small" in w for w in e["warnings"])
    assert displacement.is_complete(out)                    # it still ran to the end
    side = json.loads(capture_file.sidecar_path(out).read_text())
    assert side["backend"]["name"] == "emoca"
