"""Takes as an artist runs them, in the installed extension (private HOME, one subprocess):
three videos queued in the take list, Capture Takes driven by hand (the real worker, ONE
process) with one take cancelled from its row while another runs, the captured takes baked
onto the sample character as they finish, the list switched, auditioned and one take
re-baked, the cancelled take captured again, the Takes panel (a UIList) drawn in each state
with the real UILayout API, and Export FBX / glTF writing every take (one file, or one per
take) read back by Blender's importers."""
import importlib
import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
try:
    tx = importlib.import_module("test_extension")
except ImportError:  # --import-mode=importlib
    _spec = importlib.util.spec_from_file_location("test_extension", HERE / "test_extension.py")
    tx = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(tx)

WORKER_PY = tx.ROOT / ".venv" / "bin" / "python"


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    return tx.bx.build(tx.ROOT, tmp_path_factory.mktemp("dist"))


DRIVER = r'''
import time
from types import SimpleNamespace


class TakesDriver:
    """Blender's event loop for the modal Capture Takes: the operator's own _start, modal
    and _finish on a stand-in self, with timer events."""

    noun = "Takes capture"
    _timer = None
    _job = None

    def __init__(self):
        self.reports = []

    def report(self, level, msg):
        self.reports.append((sorted(level)[0], msg))

    def _problem(self, ctx):
        return OT._problem(ctx)

    def _command(self, ctx):
        return OT._command(self, ctx)

    def _done(self, ctx, job):
        return OT._done(self, ctx, job)

    def _apply(self, ctx, job):
        return OT._apply(self, ctx, job)

    def _start(self, ctx):
        return OT._start(self, ctx)

    def _finish(self, ctx, job):
        return OT._finish(self, ctx, job)

    def run(self, until=lambda job: False, timeout=300):
        job = self._job
        r = {"PASS_THROUGH"}
        t_end = time.time() + timeout
        while r == {"PASS_THROUGH"} and time.time() < t_end and not until(job):
            r = OT.modal(self, bpy.context, SimpleNamespace(type="TIMER", value="NOTHING"))
            time.sleep(0.02)
        return r
'''


@tx.needs_bpy
@pytest.mark.skipif(not WORKER_PY.is_file(), reason=f"the worker Python {WORKER_PY} is missing")
def test_take_list_capture_cancel_bake_switch_rebake_export(built_zip, demo_clip, tmp_path):
    from test_takes_cli import cut_clip

    vids = tmp_path / "videos"
    vids.mkdir()
    for name, start in (("a_calm", 0), ("b_smile", 20), ("c_end", 30)):
        cut_clip(demo_clip, vids / f"{name}.mp4", start, 40, 30000 / 1001)
    res = tx.run_blender_script(tmp_path, r'''
        install(enable=True)
        OT = importlib.import_module(MOD + ".operators.ops_takes").EMOCA_OT_capture_takes
        takes = importlib.import_module(MOD + ".operators.scene.takes")
        fbx_io = importlib.import_module(MOD + ".operators.scene.fbx_io")
        gltf_io = importlib.import_module(MOD + ".operators.scene.gltf_io")
        scene = bpy.context.scene
        props, tl = scene.emoca, scene.emoca_takes
        prefs = bpy.context.preferences.addons[MOD].preferences
        prefs.worker_python = sys.argv[2]
        prefs.cache_folder = os.path.join(os.getcwd(), "cache")
        vids = sys.argv[3]
        caps = os.path.join(os.getcwd(), "caps")
        os.makedirs(caps)
        out = {}

        def rows():
            return [(t.name, t.state, t.frame_start, t.frame_end) for t in tl.items]

        d = draw_all()
        out["empty"] = dict(labels=labels(d, "Takes"), capture=poll("capture_takes"),
                            lists=[c for c in d["Takes"] if c[0] == "template_list"])
        bpy.ops.emoca.add_sample_character()
        r = bpy.ops.emoca.take_add_videos(directory=vids, files=[])
        tl.folder = caps
        d = draw_all()
        out["queued"] = dict(result=sorted(r), rows=rows(), capture=poll("capture_takes"),
                             drawn=d["Takes"])

        drv = TakesDriver()
        job = drv._start(bpy.context)
        out["cmd"] = job.cmd
        drv.run(until=lambda j: j.takes.get(0, {}).get("progress", 0) > 0)
        r_cancel = bpy.ops.emoca.take_cancel(index=1)           # queued: skipped
        d = draw_all()
        out["running"] = dict(cancel=sorted(r_cancel), rows=rows(),
                              take_rows=[c for c in d["Takes"] if c[0] in ("progress",
                                                                        "operator")])
        r_end = drv.run()
        out["finished"] = dict(modal=sorted(r_end), rows=rows(), status=tl.status,
                               files=sorted(os.listdir(caps)), state=job.state,
                               reports=drv.reports)
        mesh, arm = props.target_mesh, props.target_armature
        reel = takes.find_takes([mesh, arm])
        out["reel"] = [(t.name, list(t.frames), t.action.name) for t in reel]
        out["rate"] = scene.render.fps / scene.render.fps_base

        tl.active = 2                                         # click: switch
        out["switched"] = [scene.frame_start, scene.frame_end, scene.frame_current]
        out["audition"] = sorted(bpy.ops.emoca.take_audition(index=0, play=False))
        out["auditioned"] = [scene.frame_start, scene.frame_end, tl.active]
        scene.emoca_retarget.reduce_keys = False
        n_before = sum(len(fc.keyframe_points) for l in reel[0].action.layers
                       for s in l.strips for b in s.channelbags for fc in b.fcurves)
        out["rebake"] = sorted(bpy.ops.emoca.take_rebake(index=0))
        n_after = sum(len(fc.keyframe_points) for l in reel[0].action.layers
                      for s in l.strips for b in s.channelbags for fc in b.fcurves)
        out["keys"] = [n_before, n_after, tl.status]

        drv = TakesDriver()                                   # the cancelled one again
        job = drv._start(bpy.context)
        out["again_cmd"] = job.cmd
        drv.run()
        out["again"] = dict(rows=rows(), status=tl.status, msg=[t.message for t in tl.items],
                            state=job.state, error=job.error)
        reel = takes.find_takes([mesh, arm])
        out["reel2"] = [(t.name, list(t.frames)) for t in reel]
        d = draw_all()
        out["baked_drawn"] = [c for c in d["Takes"] if c[0] in ("operator", "label")]

        fbx = os.path.join(os.getcwd(), "all.fbx")
        out["fbx"] = sorted(bpy.ops.emoca.export_fbx(filepath=fbx))
        got = fbx_io.read_fbx_takes(fbx)
        out["fbx_takes"] = {k: sorted(v) for k, v in got.items()}
        glb = os.path.join(os.getcwd(), "one.glb")
        out["glb"] = sorted(bpy.ops.emoca.export_gltf(filepath=glb, takes='PER_TAKE'))
        out["glb_files"] = sorted(f for f in os.listdir(os.getcwd()) if f.endswith(".glb"))
        one = os.path.join(os.getcwd(), "one_b_smile.glb")
        out["glb_takes"] = sorted(gltf_io.read_gltf_takes(one)) if os.path.isfile(one) else []
        out["remove"] = sorted(bpy.ops.emoca.take_remove(index=0))
        out["after_remove"] = [t.name for t in takes.find_takes([mesh, arm])]
        result(out)
    ''', str(built_zip), str(WORKER_PY), str(vids), libs=tx.FAKE_LAYOUT + DRIVER, timeout=900)

    e = res["empty"]
    assert e["capture"] is False and e["lists"] == [["template_list", "EMOCA_UL_takes"]]
    assert any("Add videos to the take list first" in t for t in e["labels"])
    q = res["queued"]
    assert q["result"] == ["FINISHED"] and q["capture"] is True
    assert [r[:2] for r in q["rows"]] == [["a_calm", "QUEUED"], ["b_smile", "QUEUED"],
                                          ["c_end", "QUEUED"]]
    cmd = res["cmd"]
    assert cmd[4] == "capture" and "--stdin-control" in cmd
    assert [Path(c).name for c in cmd[5:8]] == ["a_calm.mp4", "b_smile.mp4", "c_end.mp4"]
    run = res["running"]
    assert run["cancel"] == ["FINISHED"]
    assert run["rows"][0][1] == "CAPTURING"
    assert ["operator", "emoca.take_cancel"] in run["take_rows"]
    assert any(c[0] == "progress" for c in run["take_rows"])
    f = res["finished"]
    assert f["state"] == "done" and f["modal"] == ["FINISHED"], f
    assert [r[1] for r in f["rows"]] == ["BAKED", "CANCELLED", "BAKED"], f
    assert f["files"] == ["a_calm.capture.json", "a_calm.capture.npz", "c_end.capture.json",
                          "c_end.capture.npz"]
    assert "Captured 2 takes; baked 2 onto the character" in f["status"]
    # keep the scene's 24 fps (the default Scene Rate): the 29.97 fps takes fall between
    assert res["rate"] == pytest.approx(24.0)
    assert [(n, a) for n, _f, a in res["reel"]] == [("a_calm", "a_calm"), ("c_end", "c_end")]
    (a0, a1), (c0, c1) = res["reel"][0][1], res["reel"][1][1]
    assert a0 == 1 and a1 == 33 and c0 == a1 + 11            # 40 frames at 29.97 in 24 fps
    assert res["switched"] == [c0, c1, c0]
    assert res["audition"] == ["FINISHED"] and res["auditioned"] == [a0, a1, 0]
    n_before, n_after, status = res["keys"]
    assert n_after > n_before and status.startswith("Baked a_calm")
    assert Path(res["again_cmd"][5]).name == "b_smile.mp4" and len(res["again_cmd"]) > 6
    assert [r[1] for r in res["again"]["rows"]] == ["BAKED", "BAKED", "BAKED"], res["again"]
    assert [n for n, _ in res["reel2"]] == ["a_calm", "c_end", "b_smile"]
    assert ["operator", "emoca.take_audition"] in res["baked_drawn"]
    assert ["operator", "emoca.take_rebake"] in res["baked_drawn"]
    assert res["fbx"] == ["FINISHED"]
    assert res["fbx_takes"] == {n: ["Sample_Character", "Sample_Character_rig"]
                                for n in ("a_calm", "b_smile", "c_end")}
    assert res["glb"] == ["FINISHED"]
    assert res["glb_files"] == ["one_a_calm.glb", "one_b_smile.glb", "one_c_end.glb"]
    assert res["glb_takes"] == ["b_smile"]
    assert res["remove"] == ["FINISHED"] and res["after_remove"] == ["c_end", "b_smile"]
