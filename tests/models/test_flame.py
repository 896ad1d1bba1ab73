"""FLAME core: reading official pickles without chumpy, validation, LBS (numpy, torch,
smplx parity), landmark embeddings, masks, UVs, conversion to a HeadModel.

Synthetic FLAME files come from tests/flame_synthetic.py (the official layout); the FLAME
auxiliary files are read from ../shared/flame_aux and those tests skip when it is absent.
"""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import flame_synthetic as fs  # noqa: E402

from emoca_blender.models import flame  # noqa: E402
from emoca_blender.models.head_model import pose_vertices  # noqa: E402
from emoca_blender.rotations import rotvec_to_matrix  # noqa: E402

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = fs.make_flame_dict(seed=0)
    p = fs.write_flame_pickle(tmp_path_factory.mktemp("flame") / "generic_model.pkl", d)
    return d, p


def _params(m, B=4, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    betas = rng.normal(0, 1, (B, m.n_shape))
    expr = rng.normal(0, 1, (B, m.n_expr))
    pose = rng.normal(0, 0.25, (B, 5, 3)) * scale
    return betas, expr, pose


def aux_or_skip(name):
    p = fs.aux(name)
    if p is None:
        pytest.skip(f"{fs.SHARED_AUX / name} absent: FLAME auxiliary files are not in the repo")
    return p


# ------------------------------------------------------------------ reading

def test_synthetic_pickle_has_the_official_layout(synth):
    d, p = synth
    raw = p.read_bytes()
    assert raw[:2] == b"\x80\x02"                       # protocol 2, as the official files
    assert b"cchumpy.ch\nCh\n" in raw                   # the arrays are chumpy.ch.Ch objects
    assert b"scipy.sparse" in raw and b"csc_matrix" in raw
    assert "chumpy" not in sys.modules                  # and chumpy is never imported
    raw_d = flame.read_pickle(p)
    assert set(raw_d) == {"v_template", "f", "shapedirs", "posedirs", "J_regressor",
                          "kintree_table", "weights", "J", "bs_style", "bs_type"}
    assert sp.issparse(raw_d["J_regressor"])            # sparse kept as sparse
    assert raw_d["f"].dtype == np.uint32 and raw_d["shapedirs"].dtype == np.float64


def test_loader_reads_counts_and_arrays(synth):
    d, p = synth
    m = flame.load_flame(p)
    assert (m.n_vertices, m.faces.shape[0], m.n_shape, m.n_expr) == (770, 1536, 300, 100)
    assert np.array_equal(m.parents, [-1, 0, 1, 1, 1])
    assert np.array_equal(m.v_template, d["v_template"])
    assert np.array_equal(m.exprdirs, d["shapedirs"][:, :, 300:])
    V = m.n_vertices
    # smplx layout of posedirs: (36, V*3), row p = component p, column 3*v+c
    assert np.array_equal(m.posedirs[7].reshape(V, 3), d["posedirs"][:, :, 7])
    assert np.allclose(m.J_rest, d["J"])
    assert m.model_id() == flame.load_flame(p).model_id()


def test_flame_2023_with_other_counts_loads(tmp_path):
    """Counts are read from the file: 200 identity + 50 expression (split found from the
    norm jump between the PCA blocks), another file name."""
    d = fs.make_flame_dict(n_shape=200, n_expr=50, seed=3, n_lat=14, n_lon=18)
    p = fs.write_flame_pickle(tmp_path / "flame2023.pkl", d)
    m = flame.load_flame(p)
    assert (m.n_shape, m.n_expr) == (200, 50)
    assert m.version == "FLAME 2023"
    v, _ = m.forward(np.ones((1, 200)), np.ones((1, 50)), np.zeros((1, 5, 3)))
    expect = d["v_template"] + d["shapedirs"].sum(2)
    assert np.allclose(v[0], expect, atol=1e-12)
    assert flame.load_flame(p, n_shape=150).n_expr == 100   # an explicit split wins


def test_not_flame_pickles_are_named(tmp_path):
    p = tmp_path / "model.pkl"
    with open(p, "wb") as fh:
        pickle.dump({"weights": np.zeros(3), "vertices": np.zeros((3, 3))}, fh)
    with pytest.raises(flame.FlameError, match=r"model.pkl is not a FLAME model: it lacks "
                                               r"v_template, f, shapedirs"):
        flame.load_flame(p)
    with open(p, "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(flame.FlameError, match="pickle of a list, not a FLAME model"):
        flame.load_flame(p)
    # a pickle that would run code is refused, and nothing runs
    class Evil:
        def __reduce__(self):
            import os
            return os.system, ("touch " + str(tmp_path / "pwned"),)
    with open(p, "wb") as fh:
        pickle.dump({"v_template": Evil()}, fh)
    with pytest.raises(flame.FlameError, match=r"references (posix|os)\.system"):
        flame.load_flame(p)
    assert not (tmp_path / "pwned").exists()
    p.write_bytes(b"PK\x03\x04 this is a zip, not a pickle")
    with pytest.raises(flame.FlameError, match="model.pkl is not a FLAME model"):
        flame.load_flame(p)
    with pytest.raises(flame.FlameError, match="does not exist"):
        flame.load_flame(tmp_path / "nope.pkl")


def test_truncated_pickle(synth, tmp_path):
    _, p = synth
    raw = p.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 10, 100):
        q = tmp_path / "generic_model.pkl"
        q.write_bytes(raw[:cut])
        with pytest.raises(flame.FlameError, match=r"generic_model.pkl is truncated"):
            flame.load_flame(q)


def test_wrong_shapes_are_named(tmp_path):
    d = fs.make_flame_dict(n_shape=20, n_expr=10, n_lat=10, n_lon=12)
    bad = dict(d)
    bad["posedirs"] = d["posedirs"][:, :, :30]
    bad["kintree_table"] = np.array([[4294967295, 0, 1, 1], [0, 1, 2, 3]])
    p = fs.write_flame_pickle(tmp_path / "m.pkl", bad)
    with pytest.raises(flame.FlameError) as e:
        flame.load_flame(p)
    msg = str(e.value)
    assert "kintree_table has 4 joints, FLAME has 5" in msg
    assert "posedirs has shape" in msg
    with pytest.raises(flame.FlameError, match="FLAME's topology has 5023 and 9976"):
        flame.load_flame(fs.write_flame_pickle(tmp_path / "m.pkl", d), strict=True)


# ------------------------------------------------------------------ LBS

def test_numpy_and_torch_lbs_agree(synth):
    m = flame.load_flame(synth[1])
    b, e, pose = _params(m)
    v_np, j_np = m.forward(b, e, pose)
    tf = flame.TorchFlame(m, m.n_shape, m.n_expr, dtype=torch.float64)
    c = torch.tensor(np.concatenate([b, e], 1))
    v_t, j_t = tf.forward(c, torch.tensor(pose))
    assert np.abs(v_t.numpy() - v_np).max() < 1e-10
    assert np.abs(j_t.numpy() - j_np).max() < 1e-10
    # a vertex subset (what the fitter uses) gives the same vertices
    ids = np.array([0, 5, 100, 400, 769])
    sub = flame.TorchFlame(m, m.n_shape, m.n_expr, vertex_ids=ids, dtype=torch.float64)
    v_s, _ = sub.forward(c, torch.tensor(pose))
    assert np.abs(v_s.numpy() - v_np[:, ids]).max() < 1e-10
    # gradients are finite at the zero pose
    p0 = torch.zeros(1, 5, 3, dtype=torch.float64, requires_grad=True)
    tf.forward(torch.zeros(1, 400, dtype=torch.float64), p0)[0].sum().backward()
    assert torch.isfinite(p0.grad).all()


def test_lbs_matches_head_model_skinning(synth):
    """An independent route: the HeadModel of an identity, posed by head_model.pose_vertices
    (plus pose correctives), equals FLAME's LBS when the expression is zero."""
    m = flame.load_flame(synth[1])
    b, _, pose = _params(m, B=3, seed=5)
    for i in range(3):
        hm = flame.to_head_model(m, shape=b[i], n_expr=10)
        feat = (rotvec_to_matrix(pose[i, 1:]) - np.eye(3)).reshape(-1)
        vp = hm.v_template.astype(np.float64) + (feat @ m.posedirs).reshape(-1, 3)
        ref = pose_vertices(hm, vp, pose[i])
        v, _ = m.forward(b[i:i + 1], None, pose[i:i + 1])
        assert np.abs(v[0] - ref).max() < 1e-6         # float32 template in the HeadModel


def test_parity_with_smplx_flame_layer(synth, tmp_path):
    smplx = pytest.importorskip("smplx", reason="smplx (test-only) not installed")
    d, p = synth
    m = flame.load_flame(p)
    folder = fs.write_smplx_files(tmp_path / "smplx", d)
    B = 4
    layer = smplx.FLAME(model_path=str(folder), num_betas=300, num_expression_coeffs=100,
                        batch_size=B, dtype=torch.float64)
    b, e, pose = _params(m, B=B, seed=7)
    out = layer(betas=torch.tensor(b), expression=torch.tensor(e),
                global_orient=torch.tensor(pose[:, 0]), neck_pose=torch.tensor(pose[:, 1]),
                jaw_pose=torch.tensor(pose[:, 2]), leye_pose=torch.tensor(pose[:, 3]),
                reye_pose=torch.tensor(pose[:, 4]))
    v, j = m.forward(b, e, pose)
    err = np.abs(out.vertices.detach().numpy() - v).max()
    assert err < 1e-5, err
    assert np.abs(out.joints.detach().numpy()[:, :5] - j).max() < 1e-5
    tf = flame.TorchFlame(m, 300, 100)                  # float32 torch path too
    vt, _ = tf.forward(torch.tensor(np.concatenate([b, e], 1), dtype=torch.float32),
                       torch.tensor(pose, dtype=torch.float32))
    assert np.abs(vt.numpy() - out.vertices.detach().numpy()).max() < 1e-5


# ------------------------------------------------------------------ auxiliary files

@pytest.fixture(scope="module")
def full_topology(tmp_path_factory):
    t = aux_or_skip("head_template.obj")
    d = fs.make_flame_dict(n_shape=20, n_expr=10, template=t, seed=1)
    p = fs.write_flame_pickle(tmp_path_factory.mktemp("flame_full") / "generic_model.pkl", d)
    return flame.load_flame(p, strict=True)


def test_mediapipe_embedding(full_topology):
    m = full_topology
    e = flame.load_mediapipe_embedding(aux_or_skip(flame.MEDIAPIPE_EMBEDDING), m.faces.shape[0])
    assert e.face_idx.shape == (105,) and e.mediapipe_idx.shape == (105,)
    v, _ = m.forward()
    pts = e.points(v, m.faces)[0]
    # landmarks lie on the face: the MediaPipe left eye corner (263) is on the subject's left
    k = {int(i): n for n, i in enumerate(e.mediapipe_idx)}
    assert pts[k[263], 0] > 0.02 and pts[k[33], 0] < -0.02
    assert pts[k[13], 1] < pts[k[168], 1]               # lips below the nose bridge
    with pytest.raises(flame.FlameError, match="indexes triangle .* the model has 100"):
        flame.load_mediapipe_embedding(aux_or_skip(flame.MEDIAPIPE_EMBEDDING), 100)


def test_landmark68_masks_uvs(full_topology, tmp_path):
    m = full_topology
    l68 = flame.load_landmark68_embedding(aux_or_skip(flame.LANDMARK68_EMBEDDING), 9976)
    assert l68["full"].face_idx.shape == (68,) and l68["static"].face_idx.shape == (51,)
    assert l68["dynamic_face_idx"].shape == (79, 17)
    masks = flame.load_masks(aux_or_skip(flame.MASKS), m.n_vertices)
    assert {"face", "lips", "left_eyeball", "nose"} <= set(masks)
    _, uvc, uvf = flame.load_obj_uvs(aux_or_skip(flame.HEAD_TEMPLATE), m.faces)
    assert uvf.shape == m.faces.shape and uvc.shape[1] == 2 and uvc.shape[0] > m.n_vertices
    assert 0 <= uvc.min() and uvc.max() <= 1
    with pytest.raises(flame.FlameError, match="not the model's"):
        flame.load_obj_uvs(aux_or_skip(flame.HEAD_TEMPLATE), m.faces[:100])
    hm = flame.to_head_model(m, shape=np.ones(5), n_expr=10, uv_coords=uvc, uv_faces=uvf)
    assert hm.uv_faces.shape == m.faces.shape


def test_assets_folder_names_missing_files(synth, tmp_path):
    d, _ = synth
    folder = tmp_path / "FLAME2020"
    folder.mkdir()
    fs.write_flame_pickle(folder / "generic_model.pkl", d)
    a = flame.load_assets(folder)
    assert a.model.n_expr == 100 and flame.MEDIAPIPE_EMBEDDING in a.missing
    with pytest.raises(flame.FlameError, match=r"missing FLAME file\(s\) "
                                               r"mediapipe_landmark_embedding.npz: looked in"):
        flame.load_assets(folder, need=(flame.MEDIAPIPE_EMBEDDING,))
    with pytest.raises(flame.FlameError, match="no FLAME model"):
        flame.load_assets(tmp_path)
    with pytest.raises(flame.FlameError, match="does not exist"):
        flame.load_assets(tmp_path / "absent")


def test_head_model_conversion(synth, tmp_path):
    from emoca_blender.models.head_model import load_head_model, save_head_model

    m = flame.load_flame(synth[1])
    s = np.random.default_rng(2).normal(size=50)
    hm = flame.to_head_model(m, shape=s, n_expr=50)
    assert hm.n_expressions == 50 and hm.expression_names[0] == "exp_000"
    assert np.allclose(hm.joints, m.joints(s), atol=1e-6)
    assert hm.extra["joint_expression"].shape == (50, 5, 3)
    v, _ = m.forward(s[None], np.eye(50)[3:4], None)
    assert np.allclose(hm.expression_vertices(np.eye(50)[3]), v[0], atol=1e-6)
    q = save_head_model(hm, tmp_path / "flame_head.npz")
    assert load_head_model(q).extra["model_id"] == m.model_id()
