"""The default backend: MediaPipe FaceLandmarker (tasks API, VIDEO mode), bundled, CPU.

Per frame it gives 478 landmarks, 52 blendshape scores and the facial transformation
matrix. Face choice: a few frames spread over the clip are probed for the number of faces;
with one face the landmarker runs with ``num_faces=1`` (fastest); with several it tracks up
to four and keeps the one nearest the previously chosen face (the largest at the start, or
the ``face_index``-th largest), re-acquiring after loss by the same rule.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

from ..arkit import ARKIT_NAMES, from_mediapipe
from ..errors import BadInput, Cancelled
from . import Tracked
from .. import solve


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence MediaPipe's C++ start-up chatter (absl/glog INFO lines about EGL, XNNPACK)
    by pointing file descriptor 2 at /dev/null for the duration; Python-level errors are
    unaffected because nothing Python writes happens inside. EMOCA_BLENDER_DEBUG=1 keeps it."""
    if os.environ.get("EMOCA_BLENDER_DEBUG"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _mp():
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    return mp, BaseOptions, vision


class MediaPipeBackend:
    name = "mediapipe"
    head_model = "open_head"

    def __init__(self, face_index: int = 0, max_faces: int = 4, min_detection: float = 0.5,
                 probe_frames: int = 6):
        if face_index < 0:
            raise BadInput(f"face index must be >= 0, got {face_index}")
        self.face_index = int(face_index)
        self.max_faces = int(max(1, max_faces))
        self.min_detection = float(min_detection)
        self.probe_frames = int(probe_frames)

    # -- model -------------------------------------------------------------------------
    def model_files(self) -> dict[str, str]:
        from ..mediapipe_topology import task_path

        return {"face_landmarker": str(task_path())}

    def _landmarker(self, mode: str, num_faces: int):
        from ..mediapipe_topology import task_path

        mp, BaseOptions, vision = _mp()
        running = vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE
        opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(task_path())),
            running_mode=running, num_faces=num_faces,
            min_face_detection_confidence=self.min_detection,
            min_face_presence_confidence=self.min_detection,
            min_tracking_confidence=0.5,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        with quiet_native_stderr():
            return vision.FaceLandmarker.create_from_options(opts)

    def count_faces(self, video_path, start: int, end: int) -> int:
        """Most faces seen in a few frames spread over [start, end)."""
        import cv2

        mp, _, _ = _mp()
        cap = cv2.VideoCapture(str(video_path))
        best = 0
        try:
            lm = self._landmarker("image", self.max_faces)
            try:
                picks = np.unique(np.linspace(start, max(start, end - 1),
                                              self.probe_frames).astype(int))
                for f in picks:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, int(f))
                    ok, frame = cap.read()
                    if not ok:
                        continue
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    with quiet_native_stderr():
                        r = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
                    best = max(best, len(r.face_landmarks))
            finally:
                lm.close()
        finally:
            cap.release()
        return best

    # -- tracking ----------------------------------------------------------------------
    def track(self, frames, n_hint: int, fps: float, width: int, height: int,
              num_faces: int = 1, progress=None, cancel=None) -> Tracked:
        """Run the landmarker over ``frames`` (an iterator of (index, rgb)).

        Returns a Tracked with landmarks2d, landmarks3d, bbox, arkit, head pose, jaw, eyes,
        blinks and the expression (the open head model's ARKit basis: expression = arkit).
        """
        mp, _, _ = _mp()
        num_faces = int(np.clip(max(num_faces, self.face_index + 1), 1, self.max_faces))
        lm = self._landmarker("video", num_faces)
        scale = np.array([width, height, width], np.float32)
        idx_list, lmk_list, bs_list, mat_list = [], [], [], []
        prev_center = None
        prev_size = None
        names_cache = None
        n = 0
        first = None
        try:
            for i, rgb in frames:
                if cancel is not None and cancel():
                    raise Cancelled("capture cancelled")
                if first is None:
                    first = i
                ts = int(round((i - first) * 1000.0 / fps))
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
                if n == 0:
                    with quiet_native_stderr():  # the first call starts the graph's threads
                        r = lm.detect_for_video(image, ts)
                else:
                    r = lm.detect_for_video(image, ts)
                n += 1
                if progress is not None:
                    progress.update(n, n_hint)
                faces = r.face_landmarks
                if not faces:
                    continue
                pts = [np.array([(p.x, p.y, p.z) for p in f], np.float32) * scale for f in faces]
                if len(pts) == 1 and num_faces == 1:
                    k = 0
                else:
                    k = _choose_face(pts, prev_center, prev_size, self.face_index)
                    if k is None:
                        continue
                p = pts[k]
                lo, hi = p[:, :2].min(0), p[:, :2].max(0)
                prev_center, prev_size = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
                if names_cache is None:
                    names_cache = [c.category_name for c in r.face_blendshapes[k]]
                idx_list.append(i - first)
                lmk_list.append(p)
                bs_list.append([c.score for c in r.face_blendshapes[k]])
                mat_list.append(np.asarray(r.facial_transformation_matrixes[k], np.float32))
        finally:
            lm.close()
        N = n
        found = np.zeros(N, bool)
        lmk = np.zeros((N, 478, 3), np.float32)
        arkit = np.zeros((N, 52), np.float32)
        mats = np.tile(np.eye(4, dtype=np.float32), (N, 1, 1))
        if idx_list:
            ix = np.asarray(idx_list)
            found[ix] = True
            lmk[ix] = np.stack(lmk_list)
            arkit[ix] = from_mediapipe(names_cache, np.asarray(bs_list, np.float32))
            mats[ix] = np.stack(mat_list)
        arrays = solve.from_mediapipe(lmk, arkit, mats)
        arrays["bbox"] = np.concatenate([lmk[:, :, :2].min(1), lmk[:, :, :2].max(1)], 1)
        arrays["landmarks2d"] = lmk[:, :, :2]
        return Tracked(found=found, arrays=arrays,
                       names={"expression": ARKIT_NAMES},
                       shape=np.zeros(0, np.float32), head_model=self.head_model,
                       info={"frames_decoded": N, "num_faces": num_faces})


def _choose_face(pts, prev_center, prev_size, face_index):
    """Index of the face to keep: nearest to the previous one, else by size rank."""
    boxes = [(p[:, :2].min(0), p[:, :2].max(0)) for p in pts]
    centers = np.array([(lo + hi) / 2 for lo, hi in boxes])
    sizes = np.array([np.linalg.norm(hi - lo) for lo, hi in boxes])
    if prev_center is None:
        order = np.argsort(-sizes)
        return int(order[face_index]) if face_index < len(order) else None
    d = np.linalg.norm(centers - prev_center, axis=1)
    k = int(np.argmin(d))
    # a face far from where ours was (more than a face size away) is someone else
    if d[k] > max(prev_size, 1.0) * 1.0 and len(pts) > 1:
        return None
    return k
