"""The default backend: MediaPipe FaceLandmarker (tasks API, VIDEO mode), bundled, CPU.

Per frame it gives 478 landmarks, 52 blendshape scores and the facial transformation
matrix. Face choice: the first few frames are probed for the number of faces inside the stream
(BlazeFace, no seeking); with one face the landmarker runs with ``num_faces=1`` (fastest);
with several it tracks up to four and keeps the one nearest the previously chosen face (the largest at the start, or
the ``face_index``-th largest), re-acquiring after loss by the same rule.
"""
from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading

import numpy as np

from ..arkit import ARKIT_NAMES, from_mediapipe
from ..errors import BadInput, Cancelled
from . import Tracked
from ..capture import solve


_QUIET_LOCK = threading.Lock()
_QUIET = {"depth": 0, "saved": None}


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence MediaPipe's C++ start-up chatter (absl/glog INFO lines about EGL, XNNPACK)
    by pointing file descriptor 2 at /dev/null for the duration; Python-level errors are
    unaffected because nothing Python writes happens inside (the backward recovery runs in
    a worker thread: a progress bar redraw on the terminal during its first frame can be
    lost, nothing else). Nests and overlaps across threads: the first to enter redirects,
    the last to leave restores. EMOCA_BLENDER_DEBUG=1 keeps the chatter."""
    if os.environ.get("EMOCA_BLENDER_DEBUG"):
        yield
        return
    with _QUIET_LOCK:
        if _QUIET["depth"] == 0:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError):
                saved = None
            if saved is not None:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
            _QUIET["saved"] = saved
        _QUIET["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET["depth"] -= 1
            if _QUIET["depth"] == 0 and _QUIET["saved"] is not None:
                os.dup2(_QUIET["saved"], 2)
                os.close(_QUIET["saved"])
                _QUIET["saved"] = None


def _face_mesh(min_detection: float):
    """MediaPipe's legacy FaceMesh graph (478 points with the iris refinement), in tracking
    mode; it ships inside the mediapipe wheel."""
    mp, _, _ = _mp()
    with quiet_native_stderr():
        return mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=min_detection, min_tracking_confidence=0.5)


def _mp():
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    return mp, BaseOptions, vision


#: one NormalizedLandmark as serialised when x, y and z are set and nothing else: field tag,
#: length 15, then x, y, z each as tag + little-endian float32
_LMK_BYTES = 17
_LMK_TAGS = ((0, 0x0A), (1, 15), (2, 0x0D), (7, 0x15), (12, 0x1D))


def landmarks_from_proto(f) -> np.ndarray:
    """(L,3) float32 x, y, z of a NormalizedLandmarkList protobuf.

    Reads the serialised message with numpy (about 20 us for 478 points) instead of making
    478 Python objects (about 200 us): every entry has the same 17-byte layout when x, y and
    z are set and visibility and presence are not, which is checked. Any other layout (a
    coordinate exactly 0, which proto3 leaves out; visibility set) takes the slow path, so
    the values are always those of the objects."""
    b = f.SerializeToString()
    n = len(b) // _LMK_BYTES
    if n and len(b) == n * _LMK_BYTES:
        a = np.frombuffer(b, np.uint8).reshape(n, _LMK_BYTES)
        if all((a[:, i] == v).all() for i, v in _LMK_TAGS):
            return np.ascontiguousarray(a[:, [3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16]]
                                        ).view("<f4").astype(np.float32).reshape(n, 3)
    return np.array([(p.x, p.y, p.z) for p in f.landmark], np.float32)


def _video_detector(lm):
    """``detect(image, timestamp_ms) -> (faces, scores, labels, matrices)`` for a VIDEO-mode
    FaceLandmarker: faces as (478,3) float32 normalised landmarks, each face's blendshape
    scores (list of floats) and their labels (of the first face, or None), and the (4,4)
    facial transformation matrices.

    The fast path runs the same graph call as ``detect_for_video`` but reads the output
    protobufs straight into numpy, skipping the 478 Python landmark objects per face that
    ``FaceLandmarkerResult`` builds (about 0.5 ms a frame, some 5% of the landmarker's
    time). Values are identical. If this mediapipe lacks the pieces, the public API is used.
    """
    try:
        from mediapipe.framework.formats import matrix_data_pb2
        from mediapipe.python import packet_creator, packet_getter
        from mediapipe.tasks.python.vision import face_landmarker as fl

        names = (fl._IMAGE_IN_STREAM_NAME, fl._NORM_RECT_STREAM_NAME,
                 fl._NORM_LANDMARKS_STREAM_NAME, fl._BLENDSHAPES_STREAM_NAME,
                 fl._FACE_GEOMETRY_STREAM_NAME)
        process, to_rect = lm._process_video_data, lm.convert_to_normalized_rect
        row_major = matrix_data_pb2.MatrixData.Layout.ROW_MAJOR
        get_list, create_image, create_proto = (packet_getter.get_proto_list,
                                                packet_creator.create_image,
                                                packet_creator.create_proto)
    except (ImportError, AttributeError):
        def detect_public(image, ts):
            r = lm.detect_for_video(image, ts)
            faces = [np.array([(p.x, p.y, p.z) for p in f], np.float32)
                     for f in r.face_landmarks]
            scores = [[c.score for c in b] for b in r.face_blendshapes]
            labels = [c.category_name for c in r.face_blendshapes[0]] if scores else None
            return faces, scores, labels, list(r.facial_transformation_matrixes)
        return detect_public

    img_in, rect_in, lmk_out, bs_out, geo_out = names

    def detect(image, ts):
        us = int(ts) * 1000
        rect = to_rect(None, image, roi_allowed=False)
        out = process({img_in: create_image(image).at(us),
                       rect_in: create_proto(rect.to_pb2()).at(us)})
        pk = out[lmk_out]
        if pk.is_empty():
            return [], [], None, []
        faces = [landmarks_from_proto(f) for f in get_list(pk)]
        scores, labels = [], None
        if bs_out in out:
            for b in get_list(out[bs_out]):
                cls = b.classification
                scores.append([c.score for c in cls])
                if labels is None:
                    labels = [c.label for c in cls]
        mats = []
        if geo_out in out:
            for g in get_list(out[geo_out]):
                m = g.pose_transform_matrix
                a = np.array(m.packed_data).reshape((m.rows, m.cols))
                mats.append(a if m.layout == row_major else a.T)
        return faces, scores, labels, mats

    return detect


_DETECTOR_BUF: dict[str, bytes] = {}


def _count_ahead(frames, make_detector, k: int, handover: list | None = None):
    """Count faces in the first ``k`` frames in a helper thread, ahead of the tracker.

    Returns (items, thread): ``items`` yields (index, rgb, faces) for those frames and
    (index, rgb, None) after them, from the same iterator. The helper makes the detector,
    runs it while the main thread creates the landmarker and tracks the first frames, and
    closes it; the main thread continues the iterator only once the helper is done with it.
    Join ``thread`` before the frames' source is closed. With ``handover`` (a list) the
    detector is appended to it instead of being closed (the caller then owns it).
    """
    import queue

    mp, _, _ = _mp()
    it = iter(frames)
    q: queue.Queue = queue.Queue()
    done = object()

    def work():
        det = None
        try:
            det = make_detector()
            for n in range(k):
                try:
                    i, rgb = next(it)
                except StopIteration:
                    break
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
                with quiet_native_stderr() if n == 0 else contextlib.nullcontext():
                    seen = len(det.detect(image).detections)
                q.put((i, rgb, seen))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)
        finally:
            if det is not None:
                if handover is not None:
                    handover.append(det)
                else:
                    det.close()
            q.put(done)

    t = threading.Thread(target=work, name="emoca-facecount", daemon=True)
    t.start()

    def items():
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        for i, rgb in it:
            yield i, rgb, None

    return items(), t


class _Recount:
    """Counts faces on frames offered after the first ones, in a helper thread, so that a
    face entering later in the clip is noticed (the tracker then keeps the chosen face among
    several instead of re-acquiring whoever is there after a loss). A frame offered while
    the previous one is still being looked at is skipped: the tracker never waits."""

    def __init__(self, make_detector, handed: list | None = None):
        import queue

        self._make = make_detector
        self.handed = handed if handed is not None else []   # a detector made earlier
        self._q: queue.Queue = queue.Queue(maxsize=1)
        self._t: threading.Thread | None = None
        self.max_seen = 0
        self.checked = 0
        self.error: str | None = None

    def offer(self, rgb) -> None:
        import queue

        if self._t is None:
            self._t = threading.Thread(target=self._work, name="emoca-recount", daemon=True)
            self._t.start()
        try:
            self._q.put_nowait(rgb)
        except queue.Full:
            pass

    def _work(self):
        mp, _, _ = _mp()
        det = None
        try:
            det = self.handed.pop() if self.handed else self._make()
            while True:
                rgb = self._q.get()
                if rgb is None:
                    break
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
                self.max_seen = max(self.max_seen, len(det.detect(image).detections))
                self.checked += 1
        except BaseException as e:  # noqa: BLE001 - a safeguard: the capture goes on
            self.error = f"{type(e).__name__}: {e}"
        finally:
            if det is not None:
                det.close()

    def close(self) -> None:
        while self.handed:                      # never started: close what it was handed
            self.handed.pop().close()
        if self._t is None:
            return
        import queue

        while True:
            try:
                self._q.put(None, timeout=0.05)
                break
            except queue.Full:
                if not self._t.is_alive():
                    break
        self._t.join()


class MediaPipeBackend:
    name = "mediapipe"
    head_model = "ict_head"

    def __init__(self, face_index: int = 0, max_faces: int = 4, min_detection: float = 0.5,
                 probe_frames: int = 6, neutral_frame: int = -1, recover_gaps: bool = True,
                 recover_bytes: int = 256 << 20, recount_every: int = 30,
                 neutral_from: str = ""):
        if face_index < 0:
            raise BadInput(f"face index must be >= 0, got {face_index}")
        self.face_index = int(face_index)
        self.max_faces = int(max(1, max_faces))
        self.min_detection = float(min_detection)
        self.probe_frames = int(probe_frames)
        self.neutral_frame = int(neutral_frame)   # absolute video frame, -1 = estimate
        # a calibration take of the same actor: its neutral replaces the estimated one
        self.neutral_take = solve.read_neutral_take(neutral_from) if neutral_from else None
        # track backwards into frames the forward pass missed, holding at most this many
        # bytes of such frames (about 40 frames of 1080p, 1,700 of 224x224)
        self.recover_gaps = bool(recover_gaps)
        self.recover_bytes = int(recover_bytes)
        # after the probe, faces are counted again on every recount_every-th frame (0 = never)
        self.recount_every = int(max(0, recount_every))

    # -- model -------------------------------------------------------------------------
    def model_files(self) -> dict[str, str]:
        from ..models.mediapipe_topology import task_path

        return {"face_landmarker": str(task_path())}

    def _landmarker(self, mode: str, num_faces: int):
        from ..models.mediapipe_topology import task_path

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

    def _detector(self):
        """MediaPipe's BlazeFace detector, read from inside face_landmarker.task (creating it
        takes ~10 ms against ~50 ms for a landmarker): used to count faces in the stream."""
        import zipfile

        from ..models.mediapipe_topology import task_path

        mp, BaseOptions, vision = _mp()
        key = str(task_path())
        buf = _DETECTOR_BUF.get(key)
        if buf is None:   # read once per process
            with zipfile.ZipFile(key) as z:
                buf = _DETECTOR_BUF[key] = z.read("face_detector.tflite")
        opts = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_buffer=buf),
                                          min_detection_confidence=self.min_detection)
        with quiet_native_stderr():
            return vision.FaceDetector.create_from_options(opts)

    # -- tracking ----------------------------------------------------------------------
    def track(self, frames, n_hint: int, fps: float, width: int, height: int,
              num_faces: int = 0, progress=None, cancel=None, frame_hook=None) -> Tracked:
        """Run the landmarker over ``frames`` (an iterator of (index, rgb)).

        ``num_faces`` <= 0 counts faces inside the stream: MediaPipe's face detector (from
        the same .task) looks at the first ``probe_frames`` frames as they go by; with one
        face (and the first face wanted) the landmarker tracks one face (fastest: its own
        detector then only runs after a loss), with more it tracks up to ``max_faces`` and
        keeps the chosen one. No seeking, no second pass over the video. After the first
        frames the detector keeps counting on every ``recount_every``-th frame (in a helper
        thread, skipping frames rather than making the tracker wait): when a second face
        enters later, tracking switches to several faces from there on. In a clip where
        several faces were seen, a face farther than a face size from where ours was last
        seen is someone else and is never taken (those frames stay without a face), also
        when it is the only one in view.

        ``frame_hook(index, rgb, landmarks_px_or_None)``, when given, is called once per
        decoded frame after tracking (index from 0; the chosen face's (478,2) pixel
        landmarks, or None without a face): per-frame analyses ride on this single decode.

        Returns a Tracked with landmarks2d, landmarks3d, bbox, arkit, head pose, jaw, eyes,
        blinks and the expression (the open head model's ARKit basis: expression = arkit).
        """
        mp, _, _ = _mp()
        probing = num_faces <= 0
        want = self.face_index + 1
        if probing:
            num_faces = want                      # raised below if the detector sees more
        num_faces = int(np.clip(max(num_faces, want), 1, self.max_faces))
        counter = None
        handed: list = []        # the probe's detector, kept for the later recounts
        if probing:   # faces are counted by a helper thread, a few frames ahead
            frames, counter = _count_ahead(frames, self._detector, self.probe_frames,
                                           handed if self.recount_every else None)
        else:
            frames = ((i, rgb, None) for i, rgb in frames)
        lm = None
        detect = None
        scale = np.array([width, height, width], np.float32)
        idx_list, lmk_list, bs_list, mat_list = [], [], [], []
        prev_center = None
        prev_size = None
        names_cache = None
        n = 0
        first = None
        faces_seen = 0
        frames_with_faces, most_faces_at = 0, None   # for the face-index message
        # Frames without a face since the last one with a face (bounded by bytes). When the
        # face is found again, MediaPipe's legacy FaceMesh graph (a different detector and
        # a tracker that holds on to turned faces better) tracks backwards through them from
        # that frame: offline captures can look both ways, and a face entering in profile
        # is often trackable from the side where it is found. Those frames have landmarks
        # but no blendshape scores: the landmark-space solve gives their ARKit weights.
        pending: collections.deque = collections.deque()
        scored_list: list[bool] = []

        def keep(rel, p, blend, matrix):
            idx_list.append(rel)
            lmk_list.append(p)
            scored_list.append(blend is not None)
            bs_list.append(blend if blend is not None else [0.0] * len(names_cache or []))
            mat_list.append(matrix if matrix is not None else np.eye(4, dtype=np.float32))

        def recover(seed_rgb, frames_in_order, center, size):
            """Track with FaceMesh from the seed through ``frames_in_order`` (nearest first),
            stopping at the first loss or jump; returns the recovered (index, landmarks).
            Runs in a worker thread beside the forward pass; touches no shared state."""
            got = []
            # the graph starts (and logs, from its own threads) between creation and the
            # first result: keep both inside one quiet window
            with quiet_native_stderr():
                fm = _face_mesh(self.min_detection)
                try:
                    res = fm.process(seed_rgb)
                except BaseException:
                    fm.close()
                    raise
            with fm:
                if not res.multi_face_landmarks:
                    return got
                for rel, img in frames_in_order:
                    res = fm.process(img)
                    if not res.multi_face_landmarks:
                        break                           # lost: leave the rest as a gap
                    q = np.array([(t.x, t.y, t.z) for t in res.multi_face_landmarks[0].landmark],
                                 np.float32) * scale
                    if q.shape[0] != 478:
                        break
                    lo, hi = q[:, :2].min(0), q[:, :2].max(0)
                    c = (lo + hi) / 2
                    if np.linalg.norm(c - center) > max(size, 1.0):
                        break                           # jumped to someone else
                    center, size = c, float(np.linalg.norm(hi - lo))
                    got.append((rel, q))
            return got

        # Recoveries run in one worker thread, overlapping the forward pass (they are
        # independent of it: another tracker over frames already seen); their frames are
        # kept at the end. Jobs queue behind each other in that thread, so the forward pass
        # never waits for one, unless the frames held (pending + every unfinished job's)
        # would pass recover_bytes: then it waits for the oldest jobs to release theirs.
        rec_pool = None
        rec_jobs: list = []                       # (future, bytes of frames it holds)

        def held_bytes() -> int:
            return sum(b for job, b in rec_jobs if not job.done())

        def make_room(need: int):
            for job, _ in rec_jobs:
                if held_bytes() + need <= self.recover_bytes:
                    break
                if not job.done():
                    job.exception()               # waits; errors surface in result() below

        def start_recovery(seed, frames_in_order, center, size):
            nonlocal rec_pool
            if rec_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                rec_pool = ThreadPoolExecutor(1, thread_name_prefix="emoca-recover")
            need = sum(f.nbytes for _, f in frames_in_order) + seed.nbytes
            make_room(need)
            rec_jobs.append((rec_pool.submit(recover, seed, frames_in_order, center, size),
                             need))

        recovered = 0
        rejected = 0
        last_found = None
        recount = _Recount(self._detector, handed) if self.recount_every else None
        try:
            # the landmarker is made while the face-count helper opens the video and looks
            # at the first frames (made afterwards, its ~25 ms came on top of theirs)
            lm = self._landmarker("video", num_faces)
            detect = _video_detector(lm)
            fresh = True
            for i, rgb, seen in frames:
                if cancel is not None and cancel():
                    raise Cancelled("capture cancelled")
                if first is None:
                    first = i
                ts = int(round((i - first) * 1000.0 / fps))
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
                fresh = fresh or lm is None
                if seen is not None:                 # one of the first probe_frames
                    most_faces_at = i if seen > faces_seen else most_faces_at
                    faces_seen = max(faces_seen, seen)
                    if seen > 1 and num_faces < self.max_faces:
                        num_faces = self.max_faces
                        if lm is not None:   # a second face turned up: track several
                            lm.close()
                            lm = None
                            fresh = True
                elif recount is not None and num_faces < self.max_faces:
                    if n % self.recount_every == 0:
                        recount.offer(rgb)
                    if recount.max_seen > 1:          # someone entered later in the clip
                        faces_seen = max(faces_seen, recount.max_seen)
                        num_faces = self.max_faces
                        if lm is not None:
                            lm.close()
                            lm = None
                            fresh = True
                if lm is None:
                    lm = self._landmarker("video", num_faces)
                    detect = _video_detector(lm)
                if fresh:
                    with quiet_native_stderr():  # the first call starts the graph's threads
                        faces, scores, labels, matrices = detect(image, ts)
                else:
                    faces, scores, labels, matrices = detect(image, ts)
                fresh = False
                n += 1
                most_faces_at = i if len(faces) > faces_seen else most_faces_at
                faces_seen = max(faces_seen, len(faces))
                frames_with_faces += bool(faces)
                if progress is not None:
                    progress.update(n, n_hint)
                if not faces:
                    if frame_hook is not None:
                        frame_hook(i - first, rgb, None)
                    if self.recover_gaps:
                        if rec_jobs:                    # their frames are released then
                            make_room((len(pending) + 1) * rgb.nbytes)
                        if len(pending) * rgb.nbytes >= self.recover_bytes:
                            pending.popleft()           # keep the frames nearest the return
                        pending.append((i - first, rgb))
                    continue
                pts = [f * scale for f in faces]
                if len(pts) == 1 and num_faces == 1:
                    k = 0
                else:
                    k = _choose_face(pts, prev_center, prev_size, self.face_index,
                                     crowded=faces_seen > 1)
                    if k is None:
                        rejected += 1
                        if frame_hook is not None:
                            frame_hook(i - first, rgb, None)
                        continue
                p = pts[k]
                if frame_hook is not None:   # e.g. the emotion hook: sees the frame once
                    frame_hook(i - first, rgb, p[:, :2])
                lo, hi = p[:, :2].min(0), p[:, :2].max(0)
                prev_center, prev_size = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
                if names_cache is None:
                    names_cache = labels
                keep(i - first, p, scores[k], np.asarray(matrices[k], np.float32))
                if pending:
                    start_recovery(rgb, list(reversed(pending)), prev_center, prev_size)
                    pending.clear()
                last_found = (rgb, prev_center, prev_size)
            if pending and last_found is not None:   # the face was lost before the end
                start_recovery(last_found[0], list(pending), last_found[1], last_found[2])
                pending.clear()
            for job, _ in rec_jobs:
                for rel, q in job.result():
                    keep(rel, q, None, None)
                    recovered += 1
        finally:
            if rec_pool is not None:
                rec_pool.shutdown(wait=True, cancel_futures=True)
            if lm is not None:
                lm.close()
            if counter is not None:
                counter.join()          # before the frames' source may be closed
            if recount is not None:
                recount.close()
        N = n
        found = np.zeros(N, bool)
        lmk = np.zeros((N, 478, 3), np.float32)
        arkit = np.zeros((N, 52), np.float32)
        mats = np.tile(np.eye(4, dtype=np.float32), (N, 1, 1))
        scored = np.zeros(N, bool)
        if idx_list:
            ix = np.asarray(idx_list)
            found[ix] = True
            scored[ix] = scored_list
            lmk[ix] = np.stack(lmk_list)
            if names_cache is not None:
                arkit[ix] = from_mediapipe(names_cache, np.asarray(bs_list, np.float32))
            mats[ix] = np.stack(mat_list)
        nf = self.neutral_frame - first if (self.neutral_frame >= 0 and first is not None) else -1
        if self.neutral_frame >= 0 and not (0 <= nf < N):
            raise BadInput(f"neutral frame {self.neutral_frame} is outside the captured frames "
                           f"{first}..{(first or 0) + N - 1}")
        arrays, solve_info = solve.from_mediapipe(lmk, arkit, mats, found, nf, scored,
                                                  neutral_take=self.neutral_take)
        constants = {k: arrays.pop(k) for k in ("neutral_landmarks", "neutral_offset")
                     if k in arrays}
        arrays["bbox"] = np.concatenate([lmk[:, :, :2].min(1), lmk[:, :, :2].max(1)], 1)
        arrays["landmarks2d"] = lmk[:, :, :2]
        return Tracked(found=found, arrays=arrays, constants=constants,
                       names={"expression": ARKIT_NAMES},
                       shape=np.zeros(0, np.float32), head_model=self.head_model,
                       info={"frames_decoded": N, "num_faces": num_faces,
                             "faces_seen": faces_seen, "frames_with_faces": frames_with_faces,
                             "most_faces_frame": most_faces_at,
                             "frames_recovered_backwards": recovered,
                             "frames_other_face_rejected": rejected,
                             "recount_frames_checked": recount.checked if recount else 0,
                             **({"recount_error": recount.error}
                                if recount is not None and recount.error else {}),
                             **solve_info})


def _choose_face(pts, prev_center, prev_size, face_index, crowded: bool = False):
    """Index of the face to keep: nearest to the previous one, else by size rank; None when
    the nearest is farther than a face size from ours and there are other faces in view, or
    (``crowded``: several faces were seen in the clip) even when it is the only one."""
    boxes = [(p[:, :2].min(0), p[:, :2].max(0)) for p in pts]
    centers = np.array([(lo + hi) / 2 for lo, hi in boxes])
    sizes = np.array([np.linalg.norm(hi - lo) for lo, hi in boxes])
    if prev_center is None:
        order = np.argsort(-sizes)
        return int(order[face_index]) if face_index < len(order) else None
    d = np.linalg.norm(centers - prev_center, axis=1)
    k = int(np.argmin(d))
    # a face far from where ours was (more than a face size away) is someone else
    if d[k] > max(prev_size, 1.0) * 1.0 and (len(pts) > 1 or crowded):
        return None
    return k


def detect_landmarks(image, min_detection: float = 0.3) -> np.ndarray | None:
    """MediaPipe FaceLandmarker (IMAGE mode) on one RGB image.

    Args:
        image: (H, W, 3) uint8 RGB array, or a path to an image file.
        min_detection: detection / presence confidence threshold (renders of stylised or
            untextured heads score lower than photographs).
    Returns:
        (478, 3) float64 landmarks: x, y in pixels (origin top-left), z in MediaPipe's
        pixel-scaled depth units; None when no face is found.
    Raises:
        BadInput: the image file is missing or cannot be decoded.
    """
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    rgb = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., :3])
    h, w = rgb.shape[:2]
    from ..models.mediapipe_topology import task_path

    mp, BaseOptions, vision = _mp()
    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(task_path())),
        running_mode=vision.RunningMode.IMAGE, num_faces=1,
        min_face_detection_confidence=min_detection,
        min_face_presence_confidence=min_detection)
    with quiet_native_stderr():
        lm = vision.FaceLandmarker.create_from_options(opts)
    try:
        res = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
    finally:
        lm.close()
    if not res.face_landmarks:
        return None
    pts = np.array([[p.x * w, p.y * h, p.z * w] for p in res.face_landmarks[0]], np.float64)
    return pts


def read_image(path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB. Raises BadInput naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInput(f"image not found: {path}")
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadInput(f"cannot decode image {path} (expected PNG or JPEG)")
    return bgr[..., ::-1].copy()
