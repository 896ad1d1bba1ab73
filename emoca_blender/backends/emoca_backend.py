"""Backend ``emoca``: the EMOCA network (or DECA's) on every frame, batched, on the GPU when
there is one.

Per frame: MediaPipe tracks the face (through :class:`MediaPipeBackend`'s public ``track``,
whose per-frame hook sees each decoded frame once), the frame is cropped as EMOCA crops it
(:mod:`..emoca_crop`: 1.375 x the 68-point box, 224 x 224, RGB/255) and the crop joins a
batch; a worker thread runs the networks on full batches while decoding, tracking and
cropping go on, so the device is fed without waiting (and the tracker never waits on the
device unless the device is the slower of the two). CUDA when present (``device='auto'``),
float16 autocast and channels-last memory there; float32 on the CPU. ``device='cuda'``
without a CUDA GPU falls back to the CPU with a warning.

The Capture gets: FLAME ``shape`` (E_flame's 100 identity coefficients averaged over the
valid frames), ``expression`` (E_expression's 50), ``jaw`` and ``head_rotation`` (FLAME's
jaw and global pose, axis-angle), ``camera`` (weak perspective: scale, tx, ty of the crop,
as EMOCA outputs it) and ``head_translation`` (its pinhole reading in the video frame,
focal length = the larger image side, as flame-fit), ``light`` (9 SH x RGB), ``detail``
(E_detail's 128), MediaPipe's landmarks, box, gaze and ARKit curves from FLAME through the
MediaPipe landmark embedding and the shared landmark-space solve
(:func:`.flame_fit.arkit_from_flame`). The pipeline then fills gaps and applies the same
temporal filter as every backend; :meth:`EmocaBackend.after_capture` writes the displacement
maps of the filtered curves beside the saved Capture (:mod:`..displacement`).

Needs the user's EMOCA checkpoint (``--emoca-checkpoint`` or ``EMOCA_BLENDER_EMOCA_CHECKPOINT``;
EMOCA v2, v1 or DECA's ``deca_model.tar``) and FLAME folder (``--flame-dir`` or
``EMOCA_BLENDER_FLAME_DIR``, with ``mediapipe_landmark_embedding.npz``).
"""
from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from .. import device_info
from ..models import emoca_crop
from ..models import emoca_net as N
from ..errors import BadInput
from . import Tracked

CHECKPOINT_ENV = "EMOCA_BLENDER_EMOCA_CHECKPOINT"
FLAME_ENV = "EMOCA_BLENDER_FLAME_DIR"
LICENCE = ("EMOCA/DECA weights: non-commercial research licence (MPI-IS, user-supplied); "
           "FLAME: MPI-IS licence (user-supplied); MediaPipe FaceLandmarker: Apache-2.0")
MIN_CROP_PX = emoca_crop.RESOLUTION     # a face square smaller than this is upsampled
CPU_BATCH = device_info.CPU_BATCH      # GPU batches follow the GPU's memory (batch_for_memory)


def resolve_device(requested: str = "auto") -> tuple[str, str | None]:
    """(device, warning or None): :func:`..device_info.choose_device` with this torch. 'auto'
    picks CUDA when torch sees a GPU, else Apple's MPS, else the CPU; 'cuda' (or 'mps')
    without one falls back to the CPU with a warning saying why (never an error)."""
    import torch

    return device_info.choose_device(torch, requested)


def resolve_precision(device: str, precision: str = "auto") -> str:
    """'fp16' (CUDA autocast), 'bf16' (autocast), or 'fp32'. Auto: fp16 on CUDA, fp32 on the
    CPU (half-precision autocast is slower there) and on MPS."""
    return device_info.precision_for(device, precision)


#: MPS is used for the EMOCA networks only where it gives the CPU's results: every code of
#: a fixed sample batch (and the detail decoder's map) within this of the CPU's, relative to
#: max(1, the code's largest magnitude). float32 on both; MPS and CPU kernels differ in
#: summation order only (~1e-5 on these networks).
MPS_TOLERANCE = 1e-3
_VERIFIED: dict = {}


def verify_device(net, device: str, make_runner=None, sample: np.ndarray | None = None
                  ) -> str | None:
    """None when ``device`` runs ``net`` (encoders, and the detail decoder when there is
    one) with the CPU's results on a fixed sample batch within :data:`MPS_TOLERANCE`; else
    why not, one line (an operation missing on the device, or results that differ).
    Remembered per (net, device) for this process. ``make_runner(device)`` -> an object with
    ``encode``/``decode_detail`` (default :class:`Runner`, float32; tests pass fakes)."""
    key = (id(net), device)
    if make_runner is None and key in _VERIFIED:
        return _VERIFIED[key]
    make = make_runner or (lambda d: Runner(net, d, "fp32", channels_last=False))
    x = sample if sample is not None else \
        np.random.default_rng(0).uniform(0, 1, (2, 3, emoca_crop.RESOLUTION,
                                                emoca_crop.RESOLUTION)).astype(np.float32)
    name = device.split(":")[0].upper()

    def run(d):
        r = make(d)
        out = dict(r.encode(x))
        if "detail" in out and hasattr(r, "decode_detail"):
            out["uv"] = r.decode_detail(out["pose"][:, 3:], out["exp"], out["detail"])
        return out

    ref = run("cpu")
    try:
        got = run(device)
    except (NotImplementedError, RuntimeError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        why = f"an operation EMOCA needs is missing on {name} ({first})"
    else:
        worst, where = 0.0, ""
        for k, a in ref.items():
            b = np.asarray(got.get(k, np.full_like(a, np.nan)), np.float64)
            err = float(np.nanmax(np.abs(b - a))) if np.isfinite(b).all() else float("inf")
            err /= max(1.0, float(np.abs(a).max()))
            if err > worst:
                worst, where = err, k
        why = None if worst <= MPS_TOLERANCE else \
            (f"{name} results differ from the CPU's (relative {worst:.2g} on {where}, "
             f"tolerance {MPS_TOLERANCE:g})")
    if make_runner is None:
        make("cpu")                                       # the net back where it started
        _VERIFIED[key] = why
    return why


# ---------------------------------------------------------------------------------------------
# Network runner
# ---------------------------------------------------------------------------------------------
class Runner:
    """The network on a device: ``encode(batch (B,3,224,224) float32 numpy) -> dict`` of
    numpy float32 codes; ``decode_detail(jaw, exp, detail) -> (B,256,256)``."""

    def __init__(self, net, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool | None = None):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = (self.device.type == "cuda") if channels_last is None else channels_last
        self.net = net.to(self.device).eval()
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)

    def _autocast(self):
        import contextlib

        if self.dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device.type, dtype=self.dtype)

    def encode(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            out = self.net.encode(x)
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def decode_detail(self, jaw, exp, detail) -> np.ndarray:
        torch = self.torch
        t = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=self.device)  # noqa: E731
        with torch.inference_mode():
            uv = self.net.decode_detail(t(jaw), t(exp), t(detail))
        return uv[:, 0].float().cpu().numpy()


_CACHE: dict[tuple, object] = {}


def load_checkpoint_cached(path):
    """emoca_checkpoint.load, remembered per (path, size, mtime) for this process."""
    from ..models import emoca_checkpoint

    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return emoca_checkpoint.load(p)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = emoca_checkpoint.load(p)
    return _CACHE[key]


def _checkpoint_path(checkpoint) -> Path:
    checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV)
    if not checkpoint:
        raise BadInput("the emoca backend needs the EMOCA checkpoint: pass --emoca-checkpoint "
                       f"(or set {CHECKPOINT_ENV}) to EMOCA v2's .ckpt (or DECA's "
                       "deca_model.tar), downloaded from https://emoca.is.tue.mpg.de")
    return Path(checkpoint)


# ---------------------------------------------------------------------------------------------
# Weak perspective -> Capture translation
# ---------------------------------------------------------------------------------------------
def camera_to_translation(cam: np.ndarray, M: np.ndarray, width: int, height: int,
                          resolution: int = emoca_crop.RESOLUTION) -> np.ndarray:
    """EMOCA's (N,3) [s, tx, ty] in its crop (``M`` (N,2,3) image->crop) -> (N,3) pinhole
    translation in metres, OpenGL camera axes, focal length = the larger image side.

    DECA projects a model point X as crop pixel ``((s (X + t) ) * (1, -1) + 1) * res/2``.
    """
    cam = np.asarray(cam, np.float64)
    M = np.asarray(M, np.float64)
    half = resolution / 2.0
    k = M[:, 0, 0]
    s = np.maximum(np.abs(cam[:, 0]), 1e-3)
    ppm = s * half / k                                       # image pixels per metre
    u0 = ((cam[:, 0] * cam[:, 1] + 1.0) * half - M[:, 0, 2]) / k
    v0 = ((-cam[:, 0] * cam[:, 2] + 1.0) * half - M[:, 1, 2]) / k
    f = float(max(width, height))
    return np.stack([(u0 - width / 2.0) / ppm, -(v0 - height / 2.0) / ppm, -f / ppm], 1)


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------
class EmocaBackend:
    name = "emoca"

    def __init__(self, face_index: int = 0, neutral_frame: int = -1, checkpoint=None,
                 flame_dir=None, device: str = "auto", batch_size: int = 0,
                 precision: str = "auto", workers_queue: int = 3, **_ignored):
        from ..models import flame as F

        self.face_index, self.neutral_frame = int(face_index), int(neutral_frame)
        self.checkpoint_path = _checkpoint_path(checkpoint)
        flame_dir = flame_dir or os.environ.get(FLAME_ENV)
        if not flame_dir:
            raise BadInput("the emoca backend outputs FLAME parameters and needs your FLAME "
                           f"download: pass --flame-dir (or set {FLAME_ENV}) to the folder "
                           "holding generic_model.pkl and mediapipe_landmark_embedding.npz")
        import torch

        # What this torch sees (the `device` command's report): device, why no GPU, batch
        # size for the GPU's memory; its summary is the capture's first progress line.
        self.device_report = device_info.probe(torch, device)
        self.device, self.device_warning = (self.device_report["device"],
                                            self.device_report["warning"])
        if self.device_warning:
            warnings.warn(self.device_warning, RuntimeWarning, stacklevel=2)
        self.precision = resolve_precision(self.device, precision)
        self._batch_asked = int(batch_size)
        self.batch_size = self._batch_asked or int(self.device_report["batch_size"])
        self._update_report()
        self.queue_size = max(1, int(workers_queue))
        self.ck = load_checkpoint_cached(self.checkpoint_path)
        try:
            self.assets = F.load_assets(flame_dir, need=(F.MEDIAPIPE_EMBEDDING,))
        except F.FlameError as e:
            raise BadInput(str(e)) from None
        m = self.assets.model
        if m.n_shape < N.N_SHAPE or m.n_expr < N.N_EXP:
            raise BadInput(f"the FLAME model has {m.n_shape} identity / {m.n_expr} expression "
                           f"components; EMOCA needs at least {N.N_SHAPE} / {N.N_EXP}")
        self.head_model = m.model_id()

    def _update_report(self) -> None:
        r = self.device_report
        r.update(device=self.device, warning=self.device_warning, precision=self.precision,
                 batch_size=self.batch_size)
        device_info.finish(r)

    @property
    def device_line(self) -> str:
        """One line saying where the networks run (the pipeline's first progress line)."""
        return self.device_report["summary"]

    def _check_mps(self, progress=None) -> None:
        """On MPS, keep it only where it gives the CPU's results (:func:`verify_device`);
        else the CPU, with a warning saying which operation is missing or what differs."""
        if self.device != "mps":
            return
        why = verify_device(self.ck.net, "mps")
        if why is None:
            return
        self.device = "cpu"
        self.device_warning = f"MPS (the Apple GPU): {why}: running EMOCA on the CPU"
        warnings.warn(self.device_warning, RuntimeWarning, stacklevel=3)
        self.batch_size = self._batch_asked or CPU_BATCH
        self._update_report()

    def model_files(self) -> dict[str, str]:
        from ..models.mediapipe_topology import task_path

        return {"emoca_checkpoint": str(self.checkpoint_path),
                "flame_model": self.assets.model.source, "face_landmarker": str(task_path())}

    # -- tracking + network -------------------------------------------------------------
    def track(self, frames, n_hint, fps, width, height, num_faces=0, progress=None,
              cancel=None, frame_hook=None) -> Tracked:
        from ..errors import Cancelled
        from .mediapipe_backend import MediaPipeBackend

        self._check_mps(progress)
        if progress is not None and self.device_warning:
            progress.message(f"warning: {self.device_warning}")
        runner = Runner(self.ck.net, self.device, self.precision)
        B, R = self.batch_size, emoca_crop.RESOLUTION
        pin = runner.device.type == "cuda"
        import torch

        nbuf = self.queue_size + 2
        bufs = [torch.empty((B, 3, R, R), dtype=torch.float32, pin_memory=pin).numpy()
                for _ in range(nbuf)]
        free: queue.Queue = queue.Queue()
        for i in range(nbuf):
            free.put(i)
        work: queue.Queue = queue.Queue(maxsize=self.queue_size)
        results: dict[int, dict] = {}
        meta: dict[int, tuple] = {}                        # frame -> (M, size)
        failure: list[BaseException] = []
        t_net = [0.0]

        def worker():
            while True:
                item = work.get()
                if item is None:
                    return
                bi, idx = item
                try:
                    if not failure:
                        t0 = time.perf_counter()
                        out = runner.encode(bufs[bi][: len(idx)])
                        t_net[0] += time.perf_counter() - t0
                        for j, f in enumerate(idx):
                            results[f] = {k: v[j] for k, v in out.items()}
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                    failure.append(e)
                finally:
                    free.put(bi)

        th = threading.Thread(target=worker, name="emoca-network", daemon=True)
        th.start()
        state = {"buf": None, "idx": []}
        t_crop = [0.0]

        def flush():
            if state["buf"] is not None and state["idx"]:
                work.put((state["buf"], state["idx"]))
            state["buf"], state["idx"] = None, []

        def hook(i, rgb, lmk):
            if frame_hook is not None:
                frame_hook(i, rgb, lmk)
            if lmk is None:
                return
            if failure:
                raise failure[0]
            t0 = time.perf_counter()
            if state["buf"] is None:
                state["buf"] = free.get()
            k = len(state["idx"])
            centre, size = emoca_crop.box_from_points(emoca_crop.landmarks68(lmk))
            M = emoca_crop.crop_matrix(centre, size, R)
            emoca_crop.warp(rgb, M, R, out=bufs[state["buf"]][k])
            meta[i] = (M, float(size))
            state["idx"].append(i)
            t_crop[0] += time.perf_counter() - t0
            if len(state["idx"]) == B:
                flush()

        mp = MediaPipeBackend(face_index=self.face_index, neutral_frame=self.neutral_frame)
        t_all = time.perf_counter()
        try:
            tr = mp.track(frames, n_hint, fps, width, height, num_faces=num_faces,
                          progress=progress, cancel=cancel, frame_hook=hook)
            flush()
        finally:
            work.put(None)
            th.join()
        if failure:
            raise failure[0]
        t_total = time.perf_counter() - t_all
        if cancel is not None and cancel():
            raise Cancelled("capture cancelled")
        return self._assemble(tr, results, meta, fps, width, height, progress,
                              {"network_s": round(t_net[0], 3), "crop_s": round(t_crop[0], 3),
                               "track_and_network_s": round(t_total, 3)})

    def _assemble(self, tr: Tracked, results, meta, fps, width, height, progress, timings
                  ) -> Tracked:
        from ..arkit import INDEX
        from .flame_fit import arkit_from_flame

        m, emb = self.assets.model, self.assets.mediapipe
        Nf = tr.found.shape[0]
        found = tr.found.copy()
        for i in np.flatnonzero(found):
            if i not in results:         # tracked but never cropped: cannot happen; be safe
                found[i] = False
        Fi = np.flatnonzero(found)
        a = dict(tr.arrays)
        z = lambda *s: np.zeros((Nf,) + s, np.float32)  # noqa: E731
        expr, jaw, head, cam, light, detail = z(N.N_EXP), z(3), z(3), z(3), z(9, 3), \
            z(self.ck.config.n_detail if self.ck.config.detail else 0)
        Ms = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (Nf, 1, 1))
        sizes = np.zeros(Nf)
        shape = np.zeros(N.N_SHAPE, np.float32)
        info = {"checkpoint": str(self.checkpoint_path), "device": self.device,
                "precision": self.precision, "batch_size": self.batch_size,
                "channels_last": self.device.startswith("cuda"), **self.ck.info, **timings}
        warn = []
        if self.device_warning:
            warn.append(self.device_warning)
        if Fi.size:
            stack = lambda k: np.stack([results[i][k] for i in Fi])  # noqa: E731
            pose = stack("pose")
            expr[Fi], jaw[Fi], head[Fi] = stack("exp"), pose[:, 3:], pose[:, :3]
            cam[Fi], light[Fi] = stack("cam"), stack("light")
            if self.ck.config.detail:
                detail[Fi] = stack("detail")
            shape = stack("shape").mean(0).astype(np.float32)
            for i in Fi:
                Ms[i], sizes[i] = meta[i]
            med = float(np.median(sizes[Fi]))
            info["crop_side_px_median"] = round(med, 1)
            info["crop_side_px_min"] = round(float(sizes[Fi].min()), 1)
            small = int(np.count_nonzero(sizes[Fi] < MIN_CROP_PX))
            info["frames_upsampled"] = small
            if med < MIN_CROP_PX:
                warn.append(f"the face is small for EMOCA's {MIN_CROP_PX}x{MIN_CROP_PX} crop "
                            f"(median crop side {med:.0f} px, {small} of {Fi.size} frames "
                            f"smaller): frames are upsampled {MIN_CROP_PX / med:.1f}x, so "
                            "expression and wrinkle detail are less reliable; film closer or "
                            "at a higher resolution")
        for w in warn[1 if self.device_warning else 0:]:
            warnings.warn(w, RuntimeWarning, stacklevel=3)
            if progress is not None:
                progress.message(f"warning: {w}")
        info["warnings"] = warn
        tra = np.array(a["head_translation"], np.float32)
        if Fi.size:
            tra[Fi] = camera_to_translation(cam[Fi], Ms[Fi], width, height)
        ark = np.array(a["arkit"], np.float32)
        if Fi.size:
            ark[Fi] = arkit_from_flame(m, emb, shape.astype(np.float64), expr[Fi].astype(np.float64),
                                       jaw[Fi].astype(np.float64))
        a.update(expression=expr, jaw=jaw, head_rotation=head, head_translation=tra,
                 camera=cam, light=light, arkit=ark)
        if self.ck.config.detail:
            a["detail"] = detail
        a["blinks"] = np.stack([ark[:, INDEX["eyeBlinkLeft"]], ark[:, INDEX["eyeBlinkRight"]]], 1)
        tinfo = dict(tr.info)
        tinfo["emoca"] = info
        return Tracked(found=found, arrays=a, names={"expression": m.expression_names(N.N_EXP)},
                       shape=shape, head_model=self.head_model, info=tinfo)

    # -- after the Capture is written ---------------------------------------------------
    @classmethod
    def after_capture(cls, capture, path, settings=None, progress=None, cancel=None):
        """Write the displacement sequence beside the saved capture (skipped when a complete
        one for this capture is there already). Returns its folder or None."""
        from ..models import displacement

        if "detail" not in capture:
            return None
        if displacement.is_complete(path):
            return displacement.sequence_dir(path)
        ck = load_checkpoint_cached(_checkpoint_path(getattr(settings, "emoca_checkpoint", None)))
        device, _ = resolve_device(getattr(settings, "device", "auto"))
        if device == "mps" and verify_device(ck.net, "mps") is not None:
            device = "cpu"                     # said when the capture ran (_check_mps)
        runner = Runner(ck.net, device, "fp32", channels_last=False)
        if ck.face_eye_mask is None:
            import warnings

            warnings.warn(f"{ck.path.name} carries no uv_face_eye_mask and none was found "
                          "beside it: the displacement maps cover the whole head (DECA only "
                          "trains them on the face); put DECA's uv_face_eye_mask.png beside "
                          "the checkpoint", RuntimeWarning, stacklevel=2)
        return displacement.write_sequence(
            capture, path, runner.decode_detail, fixed=ck.fixed_displacement,
            mask=ck.face_eye_mask,
            batch=64 if device.startswith("cuda") else 16, progress=progress, cancel=cancel,
            info={"checkpoint": ck.path.name, "fixed_displacement_source":
                  "fixed_displacement_256.npy or the checkpoint's fixed_uv_dis"
                  if ck.fixed_displacement is not None else None,
                  "face_eye_mask_source": ck.info.get("face_eye_mask")})
