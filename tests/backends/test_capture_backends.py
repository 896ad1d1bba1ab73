"""The Capture panel's backends in Blender: the menu offers MediaPipe, FLAME Fit and EMOCA
(each saying what it needs and its licence), the Capture operator passes the FLAME folder,
the EMOCA checkpoint (or DECA's, when no EMOCA checkpoint is set) and the device from the
preferences to the worker, poll says what is missing instead of starting a doomed job, and
the panel draws with each backend. Plus one real worker run of the emoca backend with the
command the operator builds, on a synthetic EMOCA checkpoint and FLAME (4 frames)."""
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import test_extension as tx  # noqa: E402  (its Blender session helpers; tests/ is on sys.path)
from operators import runtime, worker  # noqa: E402
from operators.runtime import MISSING, OK, UNSET, WRONG, FileStatus  # noqa: E402

MB = 1 << 20


def flame_folder(root: Path, embedding: bool = True) -> Path:
    """A FLAME folder that passes the preferences' check (a pickle's first bytes, > 10 MB);
    the model one level down, as FLAME's download unpacks."""
    d = root / "FLAME2020" / "FLAME2020"
    d.mkdir(parents=True)
    (d / "generic_model.pkl").write_bytes(b"\x80\x02}q\x00." + bytes(11 * MB))
    if embedding:
        (d / "mediapipe_landmark_embedding.npz").write_bytes(b"PK\x05\x06" + bytes(18))
    return root / "FLAME2020"


def torch_zip(path: Path) -> Path:
    """A file the checkpoint check takes for a torch.save zip of > 10 MB."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("archive/data/0", bytes(11 * MB))
    return path


# --------------------------------------------------------------------------------------
# bpy-free: the backends, the flags, the messages


def test_backends_offered_and_described():
    ids = [b.id for b in worker.BACKENDS]
    assert ids == ["mediapipe", "flame-fit", "emoca"]
    from emoca_blender.backends import BACKENDS as CORE
    assert set(ids) <= set(CORE)
    by = {b.id: b for b in worker.BACKENDS}
    assert by["mediapipe"].needs == () and "Apache-2.0" in by["mediapipe"].licence
    assert by["flame-fit"].needs == ("flame",) and "MPI-IS" in by["flame-fit"].licence
    assert "FLAME folder" in by["flame-fit"].description
    assert set(by["emoca"].needs) == {"emoca", "flame"}
    assert "non-commercial" in by["emoca"].licence
    assert "EMOCA checkpoint" in by["emoca"].description and "FLAME folder" in \
        by["emoca"].description
    assert worker.find_backend("emoca") is by["emoca"] and worker.find_backend("x") is None


@pytest.mark.parametrize("backend, models, flags", [
    ("mediapipe", {}, {}),
    ("flame-fit", {"flame_dir": "/f/FLAME2020"}, {"flame_dir": "/f/FLAME2020"}),
    ("emoca", {"flame_dir": "/f/FLAME2020", "emoca_checkpoint": "/c/e.ckpt"},
     {"flame_dir": "/f/FLAME2020", "emoca_checkpoint": "/c/e.ckpt"}),
])
def test_capture_command_flags_per_backend(backend, models, flags):
    cmd = worker.capture_command("/py", "/v/clip.mp4", "/o/clip.capture.npz", backend=backend,
                                 device="cuda", **models)
    cli = pytest.importorskip("emoca_blender.cli.main")
    args = cli.build_parser().parse_args(cmd[4:])
    assert args.backend == backend and args.device == "cuda"
    assert args.flame_dir == flags.get("flame_dir", "")
    assert args.emoca_checkpoint == flags.get("emoca_checkpoint", "")
    assert ("--flame-dir" in cmd) == ("flame_dir" in flags)
    assert ("--emoca-checkpoint" in cmd) == ("emoca_checkpoint" in flags)


def test_capture_model_args_messages(tmp_path):
    unset = FileStatus(UNSET, "Not set")
    emoca = worker.find_backend("emoca")
    fit = worker.find_backend("flame-fit")
    args, why = runtime.capture_model_args("EMOCA", emoca.needs,
                                           {"flame": unset, "emoca": unset})
    assert args == {} and why == ("EMOCA needs the EMOCA checkpoint and the FLAME folder in "
                                  "the add-on preferences")
    folder = flame_folder(tmp_path)
    flame = runtime.check_flame_folder(str(folder))
    assert flame.ok, flame
    _, why = runtime.capture_model_args("EMOCA", emoca.needs, {"flame": flame, "emoca": unset})
    assert why == "EMOCA needs the EMOCA checkpoint in the add-on preferences"
    _, why = runtime.capture_model_args("FLAME Fit", fit.needs, {"flame": unset})
    assert why == "FLAME Fit needs the FLAME folder in the add-on preferences"
    gone = runtime.check_checkpoint(str(tmp_path / "nope.ckpt"))
    assert gone.state == MISSING
    _, why = runtime.capture_model_args("EMOCA", emoca.needs, {"flame": flame, "emoca": gone})
    assert why.startswith("EMOCA: the EMOCA checkpoint (add-on preferences): File not found")
    small = tmp_path / "small.ckpt"
    small.write_bytes(b"<html>sign in</html>")
    bad = runtime.check_checkpoint(str(small))
    assert bad.state == WRONG
    _, why = runtime.capture_model_args("EMOCA", emoca.needs, {"flame": flame, "emoca": bad})
    assert "web page" in why
    ck = runtime.check_checkpoint(str(torch_zip(tmp_path / "ck" / "sub" / "e.ckpt").parent.parent))
    assert ck.state == OK
    args, why = runtime.capture_model_args("EMOCA", emoca.needs, {"flame": flame, "emoca": ck})
    assert why is None
    # the model's own folder (one below the preference), the checkpoint file found in the folder
    assert args == {"flame_dir": str(folder / "FLAME2020"),
                    "emoca_checkpoint": str(tmp_path / "ck" / "sub" / "e.ckpt")}
    no_emb = runtime.check_flame_folder(str(flame_folder(tmp_path / "b", embedding=False)))
    assert no_emb.ok
    _, why = runtime.capture_model_args("FLAME Fit", fit.needs, {"flame": no_emb})
    assert "mediapipe_landmark_embedding.npz" in why and "generic_model.pkl" in why


def test_emoca_worker_run_with_the_operators_command(tmp_path):
    """The real worker on the command the operator builds (the emoca backend, a synthetic
    EMOCA checkpoint and FLAME, 4 frames of a shared clip)."""
    pytest.importorskip("torch")
    import emoca_synthetic as es
    from conftest import shared_clips

    clips = shared_clips()
    if not clips or not es.flame_aux_available():
        pytest.skip("../shared (clips, FLAME's MediaPipe embedding) is absent")
    statuses = {"emoca": runtime.check_checkpoint(str(es.cached("emoca"))),
                "flame": runtime.check_flame_folder(str(es.cached("flame")))}
    assert all(s.ok for s in statuses.values()), statuses
    emoca = worker.find_backend("emoca")
    models, why = runtime.capture_model_args(emoca.label, emoca.needs, statuses)
    assert why is None
    out = tmp_path / "clip.capture.npz"
    cmd = worker.capture_command(sys.executable, clips[0], out, backend="emoca", device="auto",
                                 **models, extra=("--end", "4", "--no-emotion", "--no-cache"))
    job = worker.WorkerJob(cmd, output=out).start()
    assert job.wait(timeout=300) == worker.DONE, job.log_text()
    meta = json.loads(worker.sidecar_for(out).read_text())
    assert meta["backend"]["name"] == "emoca" and meta["frame_count"] == 4
    assert any("device:" in (e.get("message") or "") for e in job.events), job.events[:3]


# --------------------------------------------------------------------------------------
# In Blender


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    return tx.bx.build(tx.ROOT, tmp_path_factory.mktemp("dist"))


@tx.needs_bpy
def test_backend_menu_poll_panel_and_worker_flags(built_zip, tmp_path):
    folder = flame_folder(tmp_path / "models")
    ckpt = torch_zip(tmp_path / "models" / "EMOCA_v2" / "emoca.ckpt")
    deca = torch_zip(tmp_path / "models" / "deca_model.tar")
    argv_file = tmp_path / "argv.json"
    fake = tmp_path / "fake_python"      # records the worker's command line, then fails
    fake.write_text(f'#!/bin/sh\n"{sys.executable}" -c "import json, sys; '
                    f"json.dump(sys.argv[1:], open('{argv_file}', 'w'))\" \"$@\"\n"
                    'echo "error: recorded" >&2\nexit 2\n')
    fake.chmod(0o755)
    res = tx.run_blender_script(tmp_path, '''
        install(enable=True)
        props = bpy.context.scene.emoca
        prefs = bpy.context.preferences.addons[MOD].preferences
        ops_capture = importlib.import_module(MOD + ".operators.ops_capture")
        folder, ckpt, deca, fake, argv_file = sys.argv[2:7]
        prefs.worker_python = fake
        tmp = os.getcwd()
        open(os.path.join(tmp, "clip.mp4"), "wb").write(b"fake")
        props.video_path = os.path.join(tmp, "clip.mp4")
        out = {"items": [(i.identifier, i.name, i.description) for i in
                         props.bl_rna.properties["backend"].enum_items]}

        def state():
            d = draw_all()
            return dict(poll=poll("capture"), problem=ops_capture.capture_problem(bpy.context),
                        labels=labels(d, "Capture"))

        def run():
            if os.path.exists(argv_file):
                os.remove(argv_file)
            try:
                bpy.ops.emoca.capture()
            except RuntimeError:
                pass                        # the fake worker fails on purpose
            return json.load(open(argv_file)) if os.path.exists(argv_file) else None

        for b in ("mediapipe", "flame-fit", "emoca"):
            props.backend = b
            out["unset", b] = state()
        prefs.flame_folder = folder
        for b in ("flame-fit", "emoca"):
            props.backend = b
            out["flame", b] = state()
        prefs.emoca_checkpoint = os.path.join(tmp, "missing.ckpt")
        out["missing_ckpt"] = state()
        prefs.emoca_checkpoint = ""
        prefs.deca_checkpoint = deca
        out["deca"] = dict(state(), argv=run())
        prefs.emoca_checkpoint = os.path.dirname(ckpt)        # a folder is searched
        prefs.device = "cuda"
        for b in ("mediapipe", "flame-fit", "emoca"):
            props.backend = b
            out["ready", b] = dict(state(), argv=run())
        props.device = "cpu"                                  # the scene overrides it
        out["scene_device"] = run()
        result({" ".join(k) if isinstance(k, tuple) else k: v for k, v in out.items()})
    ''', str(built_zip), str(folder), str(ckpt), str(deca), str(fake), str(argv_file),
        libs=tx.FAKE_LAYOUT)

    items = {i: (name, desc) for i, name, desc in res["items"]}
    assert list(items) == ["mediapipe", "flame-fit", "emoca"]
    assert "Licence: Apache-2.0" in items["mediapipe"][1]
    assert "FLAME folder" in items["flame-fit"][1] and "MPI-IS" in items["flame-fit"][1]
    assert "EMOCA checkpoint" in items["emoca"][1] and "non-commercial" in items["emoca"][1]

    def licence(s):
        return [t for t in s["labels"] if t.startswith("Licence: ")]

    u = res["unset mediapipe"]
    assert u["poll"] is True and u["problem"] is None
    assert licence(u) == ["Licence: Apache-2.0 (MediaPipe models)"]
    u = res["unset flame-fit"]
    assert u["poll"] is False
    assert u["problem"] == "FLAME Fit needs the FLAME folder in the add-on preferences"
    assert u["problem"] in u["labels"]                     # the button's reason
    assert licence(u) == ["Licence: FLAME: MPI-IS licence, user-supplied"]
    assert "The FLAME folder: not set (add-on preferences)" in u["labels"]
    u = res["unset emoca"]
    assert u["poll"] is False and u["problem"] == (
        "EMOCA needs the EMOCA checkpoint and the FLAME folder in the add-on preferences")
    assert "non-commercial" in licence(u)[0]
    assert res["flame flame-fit"]["poll"] is True and res["flame flame-fit"]["problem"] is None
    assert any(t.startswith("FLAME 2020: generic_model.pkl") for t in
               res["flame flame-fit"]["labels"])
    assert res["flame emoca"]["problem"] == \
        "EMOCA needs the EMOCA checkpoint in the add-on preferences"
    m = res["missing_ckpt"]
    assert m["poll"] is False and m["problem"].startswith(
        "EMOCA: the EMOCA checkpoint (add-on preferences): File not found")

    # DECA's checkpoint stands in when no EMOCA checkpoint is set
    d = res["deca"]
    assert d["poll"] is True, d["problem"]
    assert d["argv"][d["argv"].index("--emoca-checkpoint") + 1] == str(deca)

    flame_dir = str(folder / "FLAME2020")           # the model's folder, one below
    for b in ("mediapipe", "flame-fit", "emoca"):
        r = res["ready " + b]
        assert r["poll"] is True, (b, r["problem"])
        argv = r["argv"]
        assert argv[:4] == ["-u", "-m", "emoca_blender", "capture"], argv
        assert argv[argv.index("--backend") + 1] == b
        assert argv[argv.index("--device") + 1] == "cuda"          # the preference
        assert ("--flame-dir" in argv) == (b != "mediapipe")
        assert ("--emoca-checkpoint" in argv) == (b == "emoca")
        if b != "mediapipe":
            assert argv[argv.index("--flame-dir") + 1] == flame_dir
        if b == "emoca":
            assert argv[argv.index("--emoca-checkpoint") + 1] == str(ckpt)
    sd = res["scene_device"]
    assert sd[sd.index("--device") + 1] == "cpu"
