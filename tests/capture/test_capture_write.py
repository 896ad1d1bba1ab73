"""The capture write protocol: an existing good capture is never left unreadable, whatever
happens while a new one is written to its name (a kill at every step, an error at every
step, SIGINT, a full disk, concurrent writers and readers)."""
import errno
import io
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import ROOT
from emoca_blender import capture_file as cf
from emoca_blender.errors import BadInput
from test_capture_file import synthetic


def _capture(tag, n=20):
    cap = synthetic(n=n, seed=tag)
    cap.meta["tag"] = tag
    return cap


def _tag_of(path):
    """The tag of the capture at ``path``, loaded through the sidecar check."""
    return cf.load_capture(path).meta["tag"]


def _only_the_pair(folder, name="a"):
    assert sorted(os.listdir(folder)) == [f"{name}.capture.json", f"{name}.capture.npz"]


class _Step:
    """Counts the write protocol's steps (each npz write, fsync and rename) and runs
    ``at(step_name)`` before step number ``k``."""

    def __init__(self, monkeypatch, k, at):
        self.n, self.k, self.at, self.names = 0, k, at, []
        real_replace, real_fsync, real_write = os.replace, os.fsync, cf._write_npz

        def step(name):
            self.n += 1
            self.names.append(name)
            if self.n == self.k:
                self.at(name)

        def replace(a, b):
            step(f"rename {os.path.basename(a)} -> {os.path.basename(b)}")
            return real_replace(a, b)

        def fsync(fd):
            step("fsync")
            return real_fsync(fd)

        def write_npz(f, payload, compress):
            buf = io.BytesIO()
            real_write(buf, payload, compress)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            step("npz half written")
            f.write(data[len(data) // 2:])

        monkeypatch.setattr(cf.os, "replace", replace)
        monkeypatch.setattr(cf.os, "fsync", fsync)
        monkeypatch.setattr(cf, "_write_npz", write_npz)


def _kill_self(_name):
    os.kill(os.getpid(), signal.SIGKILL)


def test_kill_at_every_step_leaves_old_or_new_capture(tmp_path, monkeypatch):
    """SIGKILL (no cleanup runs) before each step of a save over an existing capture: the
    capture of that name always loads, holds the old content until the npz rename and the
    new one from then on; the next save cleans up and leaves exactly the pair."""
    seen = []
    k = 0
    while True:
        k += 1
        folder = tmp_path / f"k{k}"
        folder.mkdir()
        path = folder / "a.capture.npz"
        cf.save_capture(_capture(1), path)
        pid = os.fork()
        if pid == 0:   # child: the writer that gets killed
            try:
                with monkeypatch.context() as m:
                    steps = _Step(m, k, _kill_self)
                    cf.save_capture(_capture(2), path)
                os._exit(100 + min(steps.n, 100))   # finished: k was past the last step
            except BaseException:  # noqa: BLE001
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status)
        assert killed or os.WEXITSTATUS(status) >= 100, status
        tag = _tag_of(path)                   # readable after the kill
        assert tag in (1, 2)
        assert cf.is_complete(path)
        seen.append(tag)
        cf.save_capture(_capture(3), path)    # the next writer recovers and cleans up
        assert _tag_of(path) == 3
        _only_the_pair(folder)
        if not killed:
            n_steps = os.WEXITSTATUS(status) - 100
            break
    kills = seen[:-1]
    assert len(kills) == n_steps >= 7       # npz write, 2 fsyncs, 3 renames, folder fsync
    assert kills[0] == 1 and kills[-1] == 2 and seen[-1] == 2
    first_new = kills.index(2)
    assert all(t == 1 for t in kills[:first_new]) and all(t == 2 for t in kills[first_new:])


def test_kill_between_renames_is_readable_by_pending_sidecar(tmp_path, monkeypatch):
    """The one window with the new npz beside the old sidecar: the pending sidecar vouches
    for it, and the next writer (or copy) rolls it forward."""
    path = tmp_path / "a.capture.npz"
    cf.save_capture(_capture(1), path)
    pid = os.fork()
    if pid == 0:
        with monkeypatch.context() as m:
            real_replace = os.replace

            def replace(a, b):
                if os.path.basename(a).endswith(".pending"):
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_replace(a, b)
            m.setattr(cf.os, "replace", replace)
            cf.save_capture(_capture(2), path)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    pending = cf.pending_sidecar_path(path)
    assert pending.is_file()
    old_side = cf.sidecar_path(path).read_text()
    assert '"tag": 1' in old_side               # the old sidecar is still there...
    assert _tag_of(path) == 2                   # ...and the new npz reads through the pending one
    cf.copy_capture(path, tmp_path / "b.capture.npz")
    assert _tag_of(tmp_path / "b.capture.npz") == 2
    cf.save_capture(_capture(3), path)
    assert not pending.exists() and _tag_of(path) == 3


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_error_at_every_step_keeps_the_old_capture(tmp_path, monkeypatch, code):
    """An OSError (full disk, permissions) at each step: BadInput naming the folder, the
    old capture loads unchanged, no temporary file is left."""
    path = tmp_path / "a.capture.npz"
    cf.save_capture(_capture(1), path)
    k = 0
    while True:
        k += 1

        def fail(name):
            raise OSError(code, os.strerror(code))

        with monkeypatch.context() as m:
            steps = _Step(m, k, fail)
            try:
                cf.save_capture(_capture(2), path)
            except BadInput as e:
                msg = str(e)
            else:
                break
        assert str(tmp_path) in msg and "a.capture.npz" in msg, msg
        if code == errno.ENOSPC:
            assert "no space left" in msg and "MB free" in msg and "needed" in msg, msg
        else:
            assert "permission denied" in msg, msg
        npz_renamed = any(n.endswith("-> a.capture.npz") for n in steps.names[:-1])
        assert _tag_of(path) == (2 if npz_renamed else 1), steps.names
        cf.save_capture(_capture(1), path)
        _only_the_pair(tmp_path)
    # a failing fsync of the folder (the last step) is not an error: the pair is in place
    assert k == steps.n >= 7 and _tag_of(path) == 2
    _only_the_pair(tmp_path)


def test_sigint_waits_until_the_pair_is_renamed(tmp_path, monkeypatch):
    """A SIGINT that arrives between the renames is delivered after the last one (the new
    pair is complete); one during the npz write cancels with the old pair intact."""
    path = tmp_path / "a.capture.npz"
    cf.save_capture(_capture(1), path)
    with monkeypatch.context() as m:
        _Step(m, 4, lambda name: os.kill(os.getpid(), signal.SIGINT))   # the first rename
        with pytest.raises(KeyboardInterrupt):
            cf.save_capture(_capture(2), path)
    assert _tag_of(path) == 2
    _only_the_pair(tmp_path)
    with monkeypatch.context() as m:
        _Step(m, 1, lambda name: os.kill(os.getpid(), signal.SIGINT))   # mid npz write
        with pytest.raises(KeyboardInterrupt):
            cf.save_capture(_capture(3), path)
    assert _tag_of(path) == 2
    _only_the_pair(tmp_path)


def _writer(path, tag, rounds, barrier):
    for r in range(rounds):
        barrier.wait()
        cf.save_capture(_capture(tag * 1000 + r), path)
        barrier.wait()


def _reader(path, stop, failures):
    n = 0
    while not stop.is_set():
        try:
            cf.load_capture(path)
            n += 1
        except cf.CaptureError as e:
            failures.put(str(e))
    failures.put(n)


def test_concurrent_writers_and_readers(tmp_path):
    """Two writers save different captures to one name at the same instant, 40 rounds,
    while a reader loads it without pause: every read succeeds, and after each round the
    capture is one writer's whole pair (its sidecar describes its npz)."""
    ctx = mp.get_context("fork")
    path = tmp_path / "a.capture.npz"
    cf.save_capture(_capture(0), path)
    rounds = 40
    barrier = ctx.Barrier(3, timeout=30)   # a writer that fails breaks it: no hang
    stop, failures = ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(path, t, rounds, barrier)) for t in (1, 2)]
    reader = ctx.Process(target=_reader, args=(path, stop, failures))
    for p in writers + [reader]:
        p.start()
    winners = []
    try:
        for r in range(rounds):
            barrier.wait()
            barrier.wait()
            cap = cf.load_capture(path)
            side = cf._read_json(cf.sidecar_path(path))
            assert side["tag"] == cap.meta["tag"] and side["created"] == cap.meta["created"]
            assert cap.meta["tag"] in (1000 + r, 2000 + r)
            winners.append(cap.meta["tag"] // 1000)
            np.testing.assert_array_equal(cap["arkit"], _capture(cap.meta["tag"])["arkit"])
    finally:
        for p in writers:
            p.join(timeout=60)
        stop.set()
        reader.join(timeout=60)
    results = []
    while True:
        item = failures.get(timeout=10)
        results.append(item)
        if isinstance(item, int):
            break
    assert results[-1] > 20 and results[:-1] == [], results[:3]
    assert [p.exitcode for p in writers] == [0, 0]
    assert 0 < winners.count(1) < rounds      # both writers do win rounds
    _only_the_pair(tmp_path)


_KILL_LOOP = """
import sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
sys.path.insert(0, {here!r})
from test_capture_write import _capture
from emoca_blender import capture_file as cf
i = 0
print("ready", flush=True)
while True:
    i += 1
    cf.save_capture(_capture(10 + i % 7, n=200), {path!r})
"""


def test_real_sigkill_at_random_instants(tmp_path):
    """A subprocess that saves over one capture in a loop is SIGKILLed at 25 random
    instants: the capture always loads afterwards."""
    path = tmp_path / "a.capture.npz"
    cf.save_capture(_capture(10, n=200), path)
    code = _KILL_LOOP.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(path),
                              here=os.path.dirname(os.path.abspath(__file__)))
    rng = np.random.default_rng(0)
    tags = set()
    for _ in range(25):
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.0, 0.3)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        tags.add(_tag_of(path))
    assert len(tags) >= 3     # the loop really was replacing it
    cf.save_capture(_capture(3), path)
    _only_the_pair(tmp_path)


def test_leftovers_of_killed_writers_are_removed(tmp_path):
    """Temporary files of a killed run (and its lock file) go with the next write of the
    name; other files, and temporaries of other names, stay."""
    path = tmp_path / "a.capture.npz"
    for name in (".a.capture.npz.abcd1234.part", ".a.capture.json.x_y_z_12.part",
                 ".a.capture.npz.lock", ".b.capture.npz.abcd1234.part", "notes.part"):
        (tmp_path / name).write_bytes(b"x")
    cf.save_capture(_capture(1), path)
    assert sorted(os.listdir(tmp_path)) == [".b.capture.npz.abcd1234.part", "a.capture.json",
                                            "a.capture.npz", "notes.part"]


def test_sidecar_schema_version_is_checked(tmp_path):
    path = cf.save_capture(_capture(1), tmp_path / "a.capture.npz")
    side = cf.sidecar_path(path)
    side.write_text(side.read_text().replace('"schema_version": 1', '"schema_version": 7'))
    with pytest.raises(cf.CaptureError, match="schema version 7 .*newer emoca_blender"):
        cf.load_capture(path)
    assert not cf.is_complete(path)


def _tmpfs(folder, size):
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()})")


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    _tmpfs(folder, "2m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_full_disk_keeps_the_old_capture(small_disk):
    """A real full file system (a 2 MB tmpfs): the save that does not fit is BadInput with
    the folder, the free and the needed space; the capture already there still loads."""
    path = small_disk / "a.capture.npz"
    cf.save_capture(_capture(1), path)           # ~0.2 MB
    with pytest.raises(BadInput, match=r"no space left on the device \(.* MB free, about .* MB needed\)"):
        cf.save_capture(_capture(2, n=600), path)   # ~5.8 MB
    assert _tag_of(path) == 1
    _only_the_pair(small_disk)
