"""The shared rotation math (emoca_blender/rotations.py) against scipy's, which the project
used in four private copies before."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from emoca_blender import rotations as rot


@pytest.fixture(scope="module")
def rotvecs():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(200, 3))
    r *= (rng.uniform(0, np.pi - 1e-3, 200) / np.linalg.norm(r, axis=1))[:, None]
    r[0] = 0.0                                  # the identity
    r[1] = [1e-14, 0.0, 0.0]                    # next to it
    r[2] = [0.0, np.pi - 1e-9, 0.0]             # a half turn
    return r


def test_rotvec_to_matrix_matches_scipy(rotvecs):
    R = rot.rotvec_to_matrix(rotvecs)
    np.testing.assert_allclose(R, Rotation.from_rotvec(rotvecs).as_matrix(), atol=1e-12)
    np.testing.assert_array_equal(rot.rotvec_to_matrix(np.zeros(3)), np.eye(3))
    # any leading shape
    assert rot.rotvec_to_matrix(rotvecs.reshape(10, 20, 3)).shape == (10, 20, 3, 3)


def test_matrix_to_rotvec_inverts_and_orthonormalises(rotvecs):
    R = rot.rotvec_to_matrix(rotvecs)
    back = rot.matrix_to_rotvec(R)
    ok = np.linalg.norm(rotvecs, axis=1) < np.pi - 1e-6         # a half turn's axis sign is free
    np.testing.assert_allclose(back[ok], rotvecs[ok], atol=1e-9)
    np.testing.assert_allclose(rot.rotvec_to_matrix(back), R, atol=1e-9)
    # a matrix a little off orthonormal (a tracker's) gives the nearest rotation's
    noisy = R + 1e-4 * np.random.default_rng(1).normal(size=R.shape)
    np.testing.assert_allclose(rot.matrix_to_rotvec(noisy)[ok], rotvecs[ok], atol=1e-3)
    assert rot.matrix_to_rotvec(R.reshape(10, 20, 3, 3)).shape == (10, 20, 3)


def test_quaternions_agree_with_matrices(rotvecs):
    q = rot.rotvec_to_quat(rotvecs)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    a, b = rotvecs[3:103], rotvecs[103:203 - 3]
    n = min(len(a), len(b))
    ab = rot.quat_to_rotvec(rot.quat_mul(rot.rotvec_to_quat(a[:n]), rot.rotvec_to_quat(b[:n])))
    np.testing.assert_allclose(rot.rotvec_to_matrix(ab),
                               rot.rotvec_to_matrix(a[:n]) @ rot.rotvec_to_matrix(b[:n]),
                               atol=1e-9)
