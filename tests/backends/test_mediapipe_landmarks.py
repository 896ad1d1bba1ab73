"""MediaPipe's landmark protobufs are read into numpy without making 478 Python objects a
frame; the values must be exactly the objects' in every layout a message can have."""
import numpy as np
import pytest

landmark_pb2 = pytest.importorskip("mediapipe.framework.formats.landmark_pb2")

from emoca_blender.backends.mediapipe_backend import landmarks_from_proto  # noqa: E402


def _objects(msg):
    return np.array([(p.x, p.y, p.z) for p in msg.landmark], np.float32)


def _message(xyz):
    msg = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in xyz:
        p = msg.landmark.add()
        p.x, p.y, p.z = float(x), float(y), float(z)
    return msg


def test_fast_read_equals_the_objects_in_every_layout():
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(0.1, 0.9, (478, 2)), rng.normal(0, 0.05, 478)].astype(np.float32)
    msg = _message(xyz)
    got = landmarks_from_proto(msg)
    assert got.dtype == np.float32 and got.shape == (478, 3)
    np.testing.assert_array_equal(got, xyz)
    np.testing.assert_array_equal(got, _objects(msg))
    # a coordinate exactly 0 is left out of the message (proto3): another layout
    msg.landmark[5].x = 0.0
    msg.landmark[300].z = 0.0
    np.testing.assert_array_equal(landmarks_from_proto(msg), _objects(msg))
    # visibility and presence set on some points
    msg.landmark[7].visibility = 0.5
    msg.landmark[8].presence = 0.9
    np.testing.assert_array_equal(landmarks_from_proto(msg), _objects(msg))
    # extremes of float32 and a negative zero
    msg = _message([(np.float32(3.4e38), -1e-38, -0.0), (1.0, 2.0, 3.0)])
    np.testing.assert_array_equal(landmarks_from_proto(msg), _objects(msg))
    assert landmarks_from_proto(landmark_pb2.NormalizedLandmarkList()).size == 0
