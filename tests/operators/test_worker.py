"""The bpy-free capture worker wrapper (operators/worker.py) against fake workers: progress
parsing, error surfacing, cancel (terminate + cleanup) and log saving."""
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from operators import worker  # noqa: E402
from operators.worker import WorkerJob  # noqa: E402


def fake(tmp_path: Path, body: str, name: str = "fake_worker.py") -> list[str]:
    """A command running a tiny Python script (the fake worker)."""
    script = tmp_path / name
    script.write_text("import json, os, signal, sys, time\n"
                      "def emit(**o):\n    print(json.dumps(o), flush=True)\n"
                      + textwrap.dedent(body))
    return [sys.executable, str(script)]


def run_to_end(job: WorkerJob, timeout: float = 20.0) -> str:
    t_end = time.monotonic() + timeout
    while job.running and time.monotonic() < t_end:
        job.poll()
        time.sleep(0.02)
    assert not job.running, "the fake worker did not finish"
    return job.state


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# --------------------------------------------------------------------------------------


def test_progress_lines_are_parsed_and_done_output_followed(tmp_path):
    out = tmp_path / "clip.capture.npz"
    cmd = fake(tmp_path, f"""
        out = {str(out)!r}
        print("plain text goes to the log", flush=True)
        emit(stage="probe", frame=0, total=None, fps=0.0, eta=None)
        for i in range(1, 11):
            emit(stage="track", frame=i, total=10, fps=50.0 + i, eta=(10 - i) / 50)
            time.sleep(0.01)
        emit(stage="message", message="2 faces seen, tracking the largest")
        open(out, "wb").write(b"npz")
        open(out[:-4] + ".json", "w").write("{{}}")
        emit(stage="done", output=out, frames=10, valid=10, cached=False)
    """)
    job = WorkerJob(cmd, output=out, cwd=tmp_path)
    seen = []
    job.start()
    assert job.running and job.pid
    while job.running:
        if job.poll():
            seen.append((job.progress.stage, job.progress.frame))
        time.sleep(0.005)
    assert job.state == worker.DONE, job.error
    assert job.returncode == 0 and job.error is None
    assert job.output == out and out.is_file()
    p = job.progress
    assert (p.stage, p.frame, p.total) == ("track", 10, 10)
    assert p.factor == 1.0 and p.fps == pytest.approx(60.0) and p.eta == 0.0
    assert job.messages == ["2 faces seen, tracking the largest"]
    assert job.events[-1]["stage"] == "done" and job.events[-1]["frames"] == 10
    assert any(s == "track" for s, _ in seen)
    log = job.log_text()
    assert "plain text goes to the log" in log and '"stage": "done"' in log
    assert "# exit code 0" in log


def test_poll_never_blocks(tmp_path):
    cmd = fake(tmp_path, """
        time.sleep(1.5)
        emit(stage="track", frame=1, total=2, fps=1.0, eta=1.0)
    """)
    job = WorkerJob(cmd, output=None, cwd=tmp_path).start()
    try:
        t0 = time.perf_counter()
        for _ in range(20):
            job.poll()
        assert time.perf_counter() - t0 < 0.2
        assert job.running
    finally:
        job.cancel()


def test_exit_2_surfaces_the_error_line_and_cleans_up(tmp_path):
    out = tmp_path / "clip.capture.npz"
    cmd = fake(tmp_path, f"""
        emit(stage="track", frame=3, total=100, fps=30.0, eta=3.2)
        # a partial temporary file, as capture_file.atomic_write_bytes names them
        open(os.path.join({str(tmp_path)!r}, ".clip.capture.npz.abc123.part"), "wb").write(b"x")
        print("Traceback (most recent call last):", file=sys.stderr)
        emit(stage="error", message="no face found in any of the 100 frames searched")
        print("error: no face found in any of the 100 frames searched in clip.mp4",
              file=sys.stderr, flush=True)
        sys.exit(2)
    """)
    job = WorkerJob(cmd, output=out, cwd=tmp_path).start()
    assert run_to_end(job) == worker.FAILED
    assert job.returncode == 2
    assert job.error == "No face found in any of the 100 frames searched in clip.mp4"
    assert "\n" not in job.error
    assert not list(tmp_path.glob(".clip.capture.npz.*.part")), "partial file left behind"
    assert not out.exists()
    log = job.save_log()
    assert log == tmp_path / "clip.capture.log" and log.is_file()
    text = log.read_text()
    assert "error: No face found" in text          # the header
    assert "[stderr] error: no face found" in text  # what the worker said
    assert "fake_worker.py" in text                 # the command line
    assert "# exit code 2" in text


def test_error_from_json_line_when_stderr_is_silent(tmp_path):
    cmd = fake(tmp_path, """
        emit(stage="error", message="video codec not supported")
        sys.exit(2)
    """)
    job = WorkerJob(cmd, output=tmp_path / "x.capture.npz", cwd=tmp_path).start()
    assert run_to_end(job) == worker.FAILED
    assert job.error == "Video codec not supported"


def test_traceback_last_line_and_missing_module_hint(tmp_path):
    cmd = fake(tmp_path, "import mediapipe_that_does_not_exist\n")
    job = WorkerJob(cmd, output=tmp_path / "x.capture.npz", cwd=tmp_path).start()
    assert run_to_end(job) == worker.FAILED
    assert job.returncode == 1
    assert job.error.startswith("ModuleNotFoundError: No module named")
    assert "Worker Python" in job.error


def test_silent_crash_names_the_exit_code(tmp_path):
    cmd = fake(tmp_path, "os._exit(3)\n")
    job = WorkerJob(cmd, output=tmp_path / "x.capture.npz", cwd=tmp_path).start()
    assert run_to_end(job) == worker.FAILED
    assert "code 3" in job.error


def test_success_without_output_is_a_failure(tmp_path):
    cmd = fake(tmp_path, 'emit(stage="done")\n')
    job = WorkerJob(cmd, output=tmp_path / "never.capture.npz", cwd=tmp_path).start()
    assert run_to_end(job) == worker.FAILED
    assert "wrote no capture" in job.error


HANG = """
    import subprocess
    out = {out!r}
    if {ignore_term!r}:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open({tmp!r} + "/child.pid", "w").write(str(child.pid))
    emit(stage="track", frame=5, total=1000, fps=10.0, eta=99.5)
    open(out, "wb").write(b"half written")               # partial output
    open(os.path.join(os.path.dirname(out), "." + os.path.basename(out) + ".zz.part"),
         "wb").write(b"tmp")
    print("ready", flush=True)
    while True:
        time.sleep(0.1)
"""


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "needs-sigkill"])
def test_cancel_terminates_the_process_group_and_deletes_partial_output(tmp_path, ignore_term):
    out = tmp_path / "clip.capture.npz"
    cmd = fake(tmp_path, HANG.format(out=str(out), tmp=str(tmp_path), ignore_term=ignore_term))
    job = WorkerJob(cmd, output=out, cwd=tmp_path).start()
    t_end = time.monotonic() + 20
    while "ready" not in job.log_text() and time.monotonic() < t_end:
        job.poll()
        time.sleep(0.02)
    assert job.running and job.progress.frame == 5
    assert out.exists()
    child_pid = int((tmp_path / "child.pid").read_text())
    t0 = time.monotonic()
    job.cancel(timeout=1.0)
    took = time.monotonic() - t0
    assert job.state == worker.CANCELLED
    assert took < 5.0
    assert not pid_alive(job.pid), "the worker survived cancel"
    deadline = time.monotonic() + 3
    while pid_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child_pid), "the worker's child survived cancel"
    assert not out.exists(), "partial output left behind"
    assert not list(tmp_path.glob(".clip.capture.npz.*.part"))
    assert job.returncode is not None and job.returncode != 0
    assert not job.poll()       # nothing more happens after cancel
    job.cancel()                # idempotent


def test_cancel_keeps_a_complete_capture_from_before(tmp_path):
    """A capture that existed before the run, untouched by it, survives a cancel."""
    out = tmp_path / "clip.capture.npz"
    out.write_bytes(b"an earlier complete capture")
    side = worker.sidecar_for(out)
    side.write_text("{}")
    cmd = fake(tmp_path, """
        print("ready", flush=True)
        time.sleep(600)
    """)
    job = WorkerJob(cmd, output=out, cwd=tmp_path).start()
    t_end = time.monotonic() + 20
    while "ready" not in job.log_text() and time.monotonic() < t_end:
        job.poll()
        time.sleep(0.02)
    job.cancel()
    assert job.state == worker.CANCELLED
    assert out.read_bytes() == b"an earlier complete capture" and side.is_file()


def test_missing_python_is_a_readable_start_error(tmp_path):
    job = WorkerJob([str(tmp_path / "no" / "python"), "-m", "emoca_blender"], output=None)
    with pytest.raises(worker.WorkerError, match="not found"):
        job.start()


def test_missing_output_folder_is_refused(tmp_path):
    job = WorkerJob([sys.executable, "-c", "pass"], output=tmp_path / "nope" / "x.capture.npz")
    with pytest.raises(worker.WorkerError, match="does not exist"):
        job.start()


def test_wait_blocks_until_done(tmp_path):
    cmd = fake(tmp_path, """
        for i in range(3):
            emit(stage="track", frame=i + 1, total=3, fps=100.0, eta=0.0)
    """)
    calls = []
    job = WorkerJob(cmd, output=None, cwd=tmp_path).start()
    assert job.wait(timeout=20, on_progress=lambda j: calls.append(j.progress.frame)) \
        == worker.DONE
    assert calls and calls[-1] == 3


# --------------------------------------------------------------------------------------
# Pure helpers


def test_parse_progress_line():
    assert worker.parse_progress_line('{"stage": "track", "frame": 1}') == \
        {"stage": "track", "frame": 1}
    for junk in ("", "hello", "{not json", "[1, 2]", "  "):
        assert worker.parse_progress_line(junk) is None


def test_progress_text_and_factor():
    p = worker.Progress(stage="track", frame=120, total=480, fps=55.2, eta=6.5)
    assert p.factor == pytest.approx(0.25)
    assert p.text() == "track 120/480 · 55 fps · 6 s left"  # noqa: RUF001
    assert worker.Progress().text() == "starting"
    assert worker.Progress(stage="probe", total=0).factor == 0.0
    assert worker.format_seconds(75) == "1:15 min"
    assert worker.format_seconds(3725) == "1:02:05 h"


def test_error_line_rules():
    assert worker.error_line(["noise", "error: bad video", "x"], 2) == "Bad video"
    assert worker.error_line([], -signal.SIGKILL) == "The worker was killed (SIGKILL)"
    assert worker.error_line([], 5) == "The worker exited with code 5 without saying why"


def test_paths():
    assert worker.sidecar_for("/a/b.capture.npz") == Path("/a/b.capture.json")
    assert worker.log_path_for("/a/b.capture.npz") == Path("/a/b.capture.log")
    assert worker.default_output_for("/v/clip.mov") == Path("/v/clip.capture.npz")


def test_resolve_worker_python(tmp_path):
    assert worker.resolve_worker_python("/opt/py/bin/python", root=tmp_path) == \
        ("/opt/py/bin/python", "preferences")
    assert worker.resolve_worker_python("", root=tmp_path) == (sys.executable, "this Python")
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("")
    assert worker.resolve_worker_python("  ", root=tmp_path) == \
        (str(venv / "python"), "add-on .venv")


def test_capture_command_is_accepted_by_the_cli():
    """The flags the operator passes are the ones the core's CLI defines."""
    cmd = worker.capture_command("/py", "/v/clip.mp4", "/o/clip.capture.npz",
                                 backend="mediapipe", device="cpu", face_index=1,
                                 filter_strength=0.25, cache_dir="/c")
    assert cmd[:5] == ["/py", "-u", "-m", "emoca_blender", "capture"]
    cli = pytest.importorskip("emoca_blender.cli.main")
    args = cli.build_parser().parse_args(cmd[4:])
    assert args.command == "capture" and args.video == ["/v/clip.mp4"]
    assert args.output == "/o/clip.capture.npz" and args.backend == "mediapipe"
    assert args.progress == "json" and args.device == "cpu"
    assert args.face_index == 1 and args.filter == 0.25 and args.cache_dir == "/c"
    backends = {b.id for b in worker.BACKENDS}
    from emoca_blender.backends import BACKENDS as CORE_BACKENDS
    assert backends <= set(CORE_BACKENDS)


def test_worker_module_is_bpy_free():
    import subprocess
    code = ("import sys; sys.path.insert(0, %r); import operators.worker; "
            "heavy = {'bpy', 'numpy', 'torch', 'mediapipe', 'cv2'} & set(sys.modules); "
            "print(sorted(heavy))" % str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_real_cli_bad_input_is_surfaced(tmp_path):
    """The real worker CLI on a missing video: exit 2 and one readable line."""
    pytest.importorskip("emoca_blender.cli.main")
    out = tmp_path / "x.capture.npz"
    cmd = worker.capture_command(sys.executable, tmp_path / "missing.mp4", out)
    job = WorkerJob(cmd, output=out).start()
    assert run_to_end(job, timeout=120) == worker.FAILED
    assert job.returncode == 2, job.log_text()
    assert "missing.mp4" in job.error and "\n" not in job.error
    assert json.dumps(job.error)  # plain text


def test_resolve_worker_python_prefers_the_installed_runtime(tmp_path):
    rt = tmp_path / "runtime"
    assert worker.resolve_worker_python("", root=tmp_path, runtime_venv=rt) == \
        (sys.executable, "this Python")                      # not installed yet
    (rt / "bin").mkdir(parents=True)
    (rt / "bin" / "python").write_text("")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text("")
    assert worker.resolve_worker_python("", root=tmp_path, runtime_venv=rt) == \
        (str(rt / "bin" / "python"), "installed runtime")
    assert worker.resolve_worker_python("/p/python", root=tmp_path, runtime_venv=rt)[1] == \
        "preferences"


def test_missing_worker_python_names_the_preference(tmp_path):
    with pytest.raises(worker.WorkerError) as e:
        WorkerJob([str(tmp_path / "nope" / "python"), "-c", "pass"]).start()
    msg = str(e.value)
    assert msg.startswith(f"Worker Python not found: {tmp_path / 'nope' / 'python'}")
    assert "Preferences > Add-ons > EMOCA Face Capture > Worker Python" in msg
    not_exec = tmp_path / "python"
    not_exec.write_text("")
    with pytest.raises(worker.WorkerError, match="not executable"):
        WorkerJob([str(not_exec)]).start()


def test_a_killed_worker_says_how_it_died(tmp_path):
    cmd = fake(tmp_path, '''
        emit(stage="track", frame=1, total=9)
        print("Fatal Python error: Segmentation fault", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    ''')
    job = WorkerJob(cmd, output=None).start()
    assert run_to_end(job) == worker.FAILED and job.returncode == -signal.SIGSEGV
    assert job.error == "Fatal Python error: Segmentation fault (the worker died: SIGSEGV)"
    assert job.progress_count == 1


# --------------------------------------------------------------------------------------
# runtime.py: model-file status without torch, and the Install Runtime plan

from operators import runtime  # noqa: E402


def _sized(path: Path, head: bytes, size: int) -> Path:
    """A file starting with ``head`` and ``size`` bytes long (sparse: cheap)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def test_flame_folder_status(tmp_path):
    assert runtime.check_flame_folder("").state == runtime.UNSET
    assert runtime.check_flame_folder(str(tmp_path / "nope")).state == runtime.MISSING
    d = tmp_path / "flame"
    d.mkdir()
    st = runtime.check_flame_folder(str(d))
    assert st.state == runtime.MISSING and "generic_model.pkl" in st.text
    (d / "FLAME2020.zip").write_bytes(b"PK\x03\x04")
    st = runtime.check_flame_folder(str(d))
    assert st.state == runtime.WRONG and "extract" in st.text
    # one level down, as the download unpacks; a web page saved under the right name
    html = _sized(d / "FLAME2020" / "generic_model.pkl", b"<!DOCTYPE html><html>", 30_000)
    st = runtime.check_flame_folder(str(d))
    assert st.state == runtime.WRONG and "web page" in st.text and st.path == str(html)
    _sized(html, b"\x80\x02}q\x00(X", 1_000_000)                  # a pickle, but truncated
    st = runtime.check_flame_folder(str(d))
    assert st.state == runtime.WRONG and "only 1.0 MB" in st.text
    _sized(html, b"\x80\x02}q\x00(X", 12 * runtime.MB)
    (d / "FLAME2020" / "landmark_embedding.npy").write_bytes(b"\x93NUMPY")
    st = runtime.check_flame_folder(str(d))
    assert st.ok and st.text == ("FLAME 2020: generic_model.pkl (12.0 MB), "
                                 "landmark_embedding.npy"), st
    assert st.icon == "CHECKMARK"


def test_checkpoint_status(tmp_path):
    import zipfile
    assert runtime.check_checkpoint("").state == runtime.UNSET
    assert runtime.check_checkpoint(str(tmp_path / "x.ckpt")).state == runtime.MISSING
    # a torch.save zip (what Lightning writes): a member named */data.pkl
    ck = tmp_path / "EMOCA_v2" / "detail" / "checkpoints" / "deca-epoch=10.ckpt"
    ck.parent.mkdir(parents=True)
    with zipfile.ZipFile(ck, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02")
        z.writestr("archive/data/0", os.urandom(1024))
    st = runtime.check_checkpoint(str(ck))
    assert st.state == runtime.WRONG and "incomplete download" in st.text   # 1 KB: too small
    with open(ck, "ab") as f:
        f.truncate(20 * runtime.MB)         # padded after the zip directory: unreadable
    st = runtime.check_checkpoint(str(ck))
    assert st.state == runtime.WRONG and "damaged zip" in st.text
    ck.unlink()
    with zipfile.ZipFile(ck, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02")
        z.writestr("archive/data/0", b"\0" * (11 * runtime.MB))
    st = runtime.check_checkpoint(str(tmp_path / "EMOCA_v2"))     # a folder is searched
    assert st.ok and st.path == str(ck) and "torch zip" in st.text, st
    # the downloaded archive itself is a zip too, but not a checkpoint
    arch = tmp_path / "EMOCA_v2_lr_mse_20.zip"
    with zipfile.ZipFile(arch, "w") as z:
        z.writestr("EMOCA_v2_lr_mse_20/cfg.yaml", "x")
    st = runtime.check_checkpoint(str(arch))
    assert st.state == runtime.WRONG and "extract it" in st.text
    # DECA's deca_model.tar: legacy torch.save (pickle with the magic number)
    tar = _sized(tmp_path / "deca_model.tar", runtime._TORCH_LEGACY_MAGIC, 20 * runtime.MB)
    st = runtime.check_checkpoint(str(tar), "deca")
    assert st.ok and "legacy torch" in st.text
    txt = tmp_path / "notes.ckpt"
    txt.write_text("hello")
    assert "not an EMOCA checkpoint" in runtime.check_checkpoint(str(txt)).text


def test_status_checks_import_no_torch(tmp_path):
    import subprocess
    code = ("import sys; sys.path.insert(0, %r); from operators import runtime; "
            "runtime.check_checkpoint(%r); runtime.check_flame_folder(%r); "
            "print(sorted({'torch', 'numpy', 'pickle', 'bpy'} & set(sys.modules)))"
            % (str(ROOT), str(tmp_path), str(tmp_path)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_install_plan_repairs_an_existing_venv(tmp_path):
    venv = tmp_path / "rt"
    plan = runtime.plan_install(venv, "/usr/bin/python3.11", root=ROOT)
    assert plan.commands[0] == ["/usr/bin/python3.11", "-m", "venv", str(venv)]
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    plan = runtime.plan_install(venv, "/usr/bin/python3.11", root=ROOT)
    assert plan.commands[0][:4] == [str(venv / "bin" / "python"), "-m", "pip", "install"]
    assert any("repairing" in n for n in plan.notes)
    plan = runtime.plan_install(venv, "/usr/bin/python3.11", root=ROOT, recreate=True)
    assert plan.commands[0] == ["/usr/bin/python3.11", "-m", "venv", "--clear", str(venv)]
    with pytest.raises(FileNotFoundError):
        runtime.plan_install(venv, root=tmp_path)


def test_install_plan_runner(tmp_path):
    """runtime.py as a script, through the worker wrapper: progress, output, failure."""
    ok = [[sys.executable, "-c", "print('step one')"], [sys.executable, "-c", "print('two')"]]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"commands": ok}))
    script = ROOT / "operators" / "runtime.py"
    job = WorkerJob([sys.executable, "-u", str(script), "run", str(plan)], output=None,
                    cwd=None).start()
    assert run_to_end(job, 60) == worker.DONE, job.log_text()
    log = job.log_text()
    assert "step one" in log and "two" in log and job.progress.frame == 2
    assert [m.split(":")[0] for m in job.messages] == ["step 1/2", "step 2/2"]
    plan.write_text(json.dumps({"commands": ok[:1] + [[sys.executable, "-c",
                                                       "import sys; sys.exit(3)"]]}))
    job = WorkerJob([sys.executable, "-u", str(script), "run", str(plan)], output=None,
                    cwd=None).start()
    assert run_to_end(job, 60) == worker.FAILED and job.returncode == 3
    assert job.error.startswith("Step 2 failed (exit code 3)")


@pytest.mark.parametrize("had_old", [False, True], ids=["new", "replacing-a-good-one"])
def test_failed_run_keeps_a_capture_it_published_completely(tmp_path, had_old):
    """A run that publishes its capture (npz + sidecar, the core's atomic protocol) and then
    fails (a later step, e.g. the emotion pass, exits 2) must not delete it: the capture is
    whole, and when it replaced a good one, deleting it would lose both. A half-written
    output at the same name is still removed (test_cancel_... above)."""
    from emoca_blender import capture_file as cf
    from test_capture_file import synthetic

    out = tmp_path / "clip.capture.npz"
    staged = tmp_path / "staged"
    staged.mkdir()
    new = cf.save_capture(synthetic(n=12, seed=3), staged / out.name)
    if had_old:
        cf.save_capture(synthetic(n=7, seed=1), out)
    cmd = fake(tmp_path, f"""
        import shutil
        # publish the finished capture as the core does: sidecar last
        shutil.copyfile({str(new)!r}, {str(out)!r} + ".tmp")
        os.replace({str(out)!r} + ".tmp", {str(out)!r})
        shutil.copyfile({str(cf.sidecar_path(new))!r}, {str(cf.sidecar_path(out))!r})
        print("error: emotion analysis failed", file=sys.stderr, flush=True)
        sys.exit(2)
    """)
    job = WorkerJob(cmd, output=out, cwd=tmp_path).start()
    assert run_to_end(job) == worker.FAILED
    assert job.kept == out
    assert cf.load_capture(out).n_frames == 12          # the new capture, whole
    assert "kept clip.capture.npz" in job.log_text()
    assert job.error.endswith("clip.capture.npz, is complete and was kept)")


@pytest.mark.parametrize("had_old", [False, True], ids=["new", "replacing-a-good-one"])
def test_failed_run_keeps_an_emotion_mlp_it_saved_completely(tmp_path, had_old):
    """The same for the Emotion MLP a training run saves (atomically, a torch zip) before a
    later step fails: kept whole. A .pt half written in place is still removed."""
    pytest.importorskip("torch")
    import numpy as np

    from emoca_blender.emotion.mlp import EmotionMLP, build_mlp

    def mlp(d: int) -> EmotionMLP:
        return EmotionMLP(build_mlp(d, 7, 16), np.zeros(d), np.ones(d), tuple("abcdefg"))

    out = tmp_path / "emotion.pt"
    staged = tmp_path / "staged.pt"
    mlp(8).save(staged)
    if had_old:
        mlp(4).save(out)
    cmd = fake(tmp_path, f"""
        import shutil
        shutil.copyfile({str(staged)!r}, {str(out)!r} + ".tmp")
        os.replace({str(out)!r} + ".tmp", {str(out)!r})
        print("error: the report step failed", file=sys.stderr, flush=True)
        sys.exit(2)
    """)
    job = WorkerJob(cmd, output=out, cwd=tmp_path).start()
    assert run_to_end(job) == worker.FAILED
    assert job.kept == out and out.read_bytes() == staged.read_bytes()
    assert EmotionMLP.load(out).mean.shape == (8,)
    assert job.error.endswith("emotion.pt, is complete and was kept)")
    # half written in place (the zip's end cut off): not vouched for, removed
    data = staged.read_bytes()
    cmd = fake(tmp_path, f"""
        with open({str(out)!r}, "wb") as f:
            f.write(open({str(staged)!r}, "rb").read()[:{len(data) // 2}])
        sys.exit(2)
    """, name="half.py")
    job = WorkerJob(cmd, output=out, cwd=tmp_path).start()
    assert run_to_end(job) == worker.FAILED
    assert job.kept is None and not out.exists()
    assert not worker.complete_output(staged.with_suffix(".txt"))
