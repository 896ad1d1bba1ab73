"""An independent client: three.js (the version pinned in tools/threejs/package-lock.json)
loads the exported FBX (FBXLoader, unity preset) and GLB (GLTFLoader) in plain node
(tools/threejs/dump_animation.mjs) and what it gets is compared with the .blend: the clip's
name, the morph target names and rest weights, jawOpen's track against the baked curve at
t = frame / fps, the jaw bone's rotation, the bones' scale.

Skips only where there is no ``node`` or ``npm ci`` has not run in tools/threejs (``make
test`` runs it wherever node is present)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
bpy = pytest.importorskip("bpy")

from conftest import ROOT  # noqa: E402
from emoca_blender.arkit import ARKIT_NAMES  # noqa: E402
from operators.scene import blender_anim, fbx_io, gltf_io  # noqa: E402
from test_blender_rig import empty_scene  # noqa: E402,F401
from test_gltf_export import character, mesh_and_armature  # noqa: E402

THREEJS = ROOT / "tools" / "threejs"


@pytest.fixture(scope="module")
def node():
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("no node on PATH: the three.js client tests need Node 18+")
    if not (THREEJS / "node_modules" / "three" / "package.json").is_file():
        pytest.skip("three.js is not installed: run `npm ci` in tools/threejs (make test does "
                    "where node is present)")
    pinned = json.loads((THREEJS / "package-lock.json").read_text())
    return exe, pinned["packages"]["node_modules/three"]["version"]


def load_in_threejs(node, path) -> dict:
    r = subprocess.run([node[0], str(THREEJS / "dump_animation.mjs"), str(path)],
                       capture_output=True, text=True, timeout=120, cwd=THREEJS)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _angle(q):
    """Rotation angle of unit quaternions [..., 4] (any component order with w last)."""
    q = np.asarray(q, float)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return 2 * np.arccos(np.clip(np.abs(q[..., 3]), 0, 1))


def _qmul_conj(a, b):
    """conj(a) * b for [x, y, z, w] quaternions (b batched)."""
    ax, ay, az, aw = -a[0], -a[1], -a[2], a[3]
    bx, by, bz, bw = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz], -1)


def jaw_open_tracks(dump) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(times, weights)] of jawOpen in the one clip, one per three.js mesh that has it (a
    glTF mesh with several materials is one three.js mesh per primitive, each with its own
    track). FBXLoader writes one track per morph target (``Mesh.morphTargetInfluences[i]``),
    GLTFLoader one for all (the weights of every target per time)."""
    (clip,) = dump["clips"]
    out = []
    for mesh in dump["meshes"]:
        if "jawOpen" not in mesh["morph_targets"]:
            continue
        i, n = mesh["morph_targets"].index("jawOpen"), len(mesh["morph_targets"])
        for t in clip["tracks"]:
            name, _, prop = t["name"].rpartition(".")
            if name != mesh["name"]:
                continue
            if prop in (f"morphTargetInfluences[{i}]", "morphTargetInfluences[jawOpen]"):
                out.append((np.array(t["times"]), np.array(t["values"])))
            elif prop == "morphTargetInfluences":
                out.append((np.array(t["times"]), np.array(t["values"]).reshape(-1, n)[:, i]))
    assert out, f"no jawOpen track in {[t['name'] for t in clip['tracks']]}"
    return out


@pytest.mark.parametrize("fps", [30.0, 29.97])
def test_threejs_reads_fbx_and_glb(empty_scene, tmp_path, node, fps):
    objs, scene, bones = character(fps=fps)
    mesh, arm = mesh_and_armature(objs)
    jaw = bones["jaw"]
    rate = scene.render.fps / scene.render.fps_base
    frames = np.arange(scene.frame_start, scene.frame_end + 1)
    jfr, jval = blender_anim.read_fcurves(mesh.data.shape_keys)[('key_blocks["jawOpen"].value',
                                                                  0)]
    q = blender_anim.read_fcurves(arm)
    jaw_q = np.stack([np.interp(frames, *q[(f'pose.bones["{jaw}"].rotation_quaternion', i)])
                      for i in (1, 2, 3, 0)], -1)                # [x, y, z, w]
    files = {
        "fbx": fbx_io.export_fbx(tmp_path / "c.fbx", objs, frame_start=scene.frame_start,
                                 frame_end=scene.frame_end, preset="unity"),
        "glb": gltf_io.export_gltf(tmp_path / "c.glb", objs, frame_start=scene.frame_start,
                                   frame_end=scene.frame_end),
    }
    for kind, path in files.items():
        d = load_in_threejs(node, path)
        assert d["three"] == node[1].split(".")[1], (d["three"], node[1])   # the pinned one
        assert [c["name"] for c in d["clips"]] == ["actor_take1"], kind
        morphed = [m for m in d["meshes"] if m["morph_targets"]]
        assert morphed, kind
        for m in morphed:
            assert set(ARKIT_NAMES) <= set(m["morph_targets"]), (kind, m["name"])
            assert np.abs(m["rest_weights"]).max() == 0.0, (kind, m["name"])  # rest = neutral
        # jawOpen: the baked curve at t = frame / fps
        err = 0.0
        for t, w in jaw_open_tracks(d):
            assert np.abs(t - frames / rate).max() < 1e-4, (kind, t[:3], frames[:3] / rate)
            err = max(err, np.abs(w - np.interp(t * rate, jfr, jval)).max())
            assert np.ptp(w) > 0.3, kind
        assert err < 1e-4, (kind, err)
        # the jaw's rotation from its rest pose, the bake's angle (frame-independent)
        (clip,) = d["clips"]
        tr = next(x for x in clip["tracks"] if x["name"] == f"{jaw}.quaternion")
        rest = next(b for b in d["bones"] if b["name"] == jaw)["quaternion"]
        qq = np.array(tr["values"]).reshape(-1, 4)
        got = _angle(_qmul_conj(np.array(rest), qq))
        assert np.abs(got - _angle(jaw_q)).max() < 1e-3, kind
        # bones and the character's root at scale 1 and at the origin
        for b in d["bones"]:
            assert np.allclose(b["scale"], 1, atol=1e-5), (kind, b)
        for r in d["roots"]:
            assert np.allclose(r["scale"], 1, atol=1e-5) and np.allclose(r["position"], 0,
                                                                        atol=1e-6), (kind, r)
        print(f"three.js r{d['three']} {kind} at {rate:.4g} fps: clip {clip['name']!r}, "
              f"{len(morphed)} mesh(es) with {len(morphed[0]['morph_targets'])} morph targets, "
              f"jawOpen max error {err:.2e}")
