"""The worker on the artist's GPU: the Install Runtime plan for each choice (CPU, CUDA,
offline wheel folder, macOS), what Check Device says for the states torch can be in
(simulated with fake torch modules: a CPU build, a CUDA build without a driver or with an old
one, a CUDA build with an H100, a Mac with MPS), the batch size for a GPU's memory, and the
EMOCA networks' MPS check falling back to the CPU where an operation is missing or the
results differ. No GPU needed: nothing here touches a real CUDA device.
"""
from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from emoca_blender import device_info as D  # noqa: E402
from emoca_blender.errors import BadInput  # noqa: E402
from operators import runtime, worker  # noqa: E402

PIN = runtime.torch_pin(ROOT)
GB = 1 << 30


# --------------------------------------------------------------------------------------
# Install Runtime: the plan for each choice


def _plan(tmp_path, **kw):
    kw.setdefault("system", "Linux")
    return runtime.plan_install(tmp_path / "rt", "/usr/bin/python3.11", root=ROOT, **kw)


def _torch_cmds(plan):
    """The commands installing a torch build of their own (``torch==2.13.0+TAG``)."""
    return [c for c in plan.commands if any(a.startswith(PIN + "+") for a in c)]


def test_pinned_torch_is_the_requirements_pin():
    assert PIN == "torch==2.13.0"


def test_plan_cpu_installs_the_cpu_build_from_the_pytorch_index(tmp_path):
    for system in ("Linux", "Windows"):
        plan = _plan(tmp_path, with_torch=True, torch_target="cpu", system=system)
        (cmd,) = _torch_cmds(plan)
        assert cmd[-3:] == [f"{PIN}+cpu", "--index-url", "https://download.pytorch.org/whl/cpu"]
        assert cmd[1:4] == ["-m", "pip", "install"]
        assert "--no-index" not in cmd and plan.needs_network
        # the other pins come from PyPI in their own command, without torch
        assert not any(a.startswith("torch") for a in plan.commands[1])
        assert "torch" in plan.commands[-1][2] and "torch.version.cuda" in plan.commands[-1][2]
        assert any("CPU only" in n for n in plan.notes)


def test_plan_cuda_12_installs_the_cuda_build(tmp_path):
    plan = _plan(tmp_path, with_torch=True, torch_target="cuda", cuda="cu126")
    (cmd,) = _torch_cmds(plan)
    assert cmd[-3:] == [f"{PIN}+cu126", "--index-url", "https://download.pytorch.org/whl/cu126"]
    # the commands as the user reads them (Show Commands)
    assert any(t.endswith("torch==2.13.0+cu126 --index-url "
                          "https://download.pytorch.org/whl/cu126") for t in plan.text())
    assert any("CUDA 12.6" in n for n in plan.notes)
    # every offered CUDA build is a folder of the index; the first (default) is CUDA 12.x
    assert runtime.CUDA_BUILDS[0][0] == "cu126"
    for tag, label, _ in runtime.CUDA_BUILDS:
        (cmd,) = _torch_cmds(_plan(tmp_path, with_torch=True, torch_target="cuda", cuda=tag))
        assert cmd[-1] == f"https://download.pytorch.org/whl/{tag}" and label.startswith("CUDA")


def test_plan_torch_index_is_the_users(tmp_path):
    mirror = "https://mirror.example.org/pytorch/whl/"
    (cmd,) = _torch_cmds(_plan(tmp_path, with_torch=True, torch_target="cuda", cuda="cu130",
                               torch_index=mirror))
    assert cmd[-1] == "https://mirror.example.org/pytorch/whl/cu130"
    full = "https://download.pytorch.org/whl/cu126"             # a full URL stays as it is
    (cmd,) = _torch_cmds(_plan(tmp_path, with_torch=True, torch_target="cuda", cuda="cu130",
                               torch_index=full))
    assert cmd[-1] == full


def test_plan_offline_wheel_folder(tmp_path):
    wheels = tmp_path / "wheels"
    # CPU: torch from the folder in the same pip run as every other pin, no network
    plan = _plan(tmp_path, with_torch=True, torch_target="cpu", wheel_dir=wheels)
    assert not plan.needs_network
    assert all("--index-url" not in c for c in plan.commands)
    pip = plan.commands[1]
    assert pip[pip.index("--find-links") + 1] == str(wheels) and "--no-index" in pip
    assert PIN in pip
    # GPU: the folder's CUDA wheel, pinned by its local tag
    plan = _plan(tmp_path, with_torch=True, torch_target="cuda", cuda="cu126", wheel_dir=wheels)
    (cmd,) = _torch_cmds(plan)
    assert cmd[-1] == f"{PIN}+cu126" and "--no-index" in cmd and "--index-url" not in cmd
    assert any("pip download torch==2.13.0+cu126" in n for n in plan.notes)


def test_plan_macos_gets_the_pypi_build(tmp_path):
    for target in ("cpu", "cuda"):
        plan = _plan(tmp_path, with_torch=True, torch_target=target, system="Darwin")
        assert _torch_cmds(plan) == [] and PIN in plan.commands[1]
        assert all("--index-url" not in c for c in plan.commands)
        assert any("MPS" in n for n in plan.notes)
    assert any("no CUDA" in n for n in plan.notes)
    assert "MPS" in runtime.torch_choice_text("cuda", system="Darwin")


def test_plan_without_torch_and_bad_target(tmp_path):
    plan = _plan(tmp_path)
    assert _torch_cmds(plan) == [] and len(plan.commands) == 4
    assert not any(a.startswith("torch") for c in plan.commands for a in c)
    assert "torch" not in plan.commands[-1][2]
    with pytest.raises(ValueError, match="torch_target"):
        _plan(tmp_path, with_torch=True, torch_target="rocm")


# --------------------------------------------------------------------------------------
# Check Device: fake torch modules for each state


def fake_torch(version="2.13.0+cpu", cuda=None, available=False, warn=None,
               gpu=("NVIDIA H100 80GB HBM3", 80 * GB, 9, 0), mps=(False, False)):
    t = types.ModuleType("torch")
    t.__version__ = version
    t.version = types.SimpleNamespace(cuda=cuda)

    def is_available():
        if warn:
            warnings.warn(warn, UserWarning)
        return available

    props = types.SimpleNamespace(name=gpu[0], total_memory=gpu[1], major=gpu[2],
                                  minor=gpu[3])
    t.cuda = types.SimpleNamespace(is_available=is_available,
                                   device_count=lambda: 1 if available else 0,
                                   get_device_properties=lambda i: props)
    t.backends = types.SimpleNamespace(mps=types.SimpleNamespace(
        is_built=lambda: mps[0], is_available=lambda: mps[1]))
    return t


def no_driver():
    return None


def test_check_device_cpu_build():
    info = D.probe(fake_torch(), driver=no_driver, system="Windows", machine="AMD64")
    assert info["lines"] == [
        "torch 2.13.0+cpu (CPU build)",
        "CUDA: not available: CPU build of torch",
        "For the GPU: Install Runtime with Run On: NVIDIA GPU (a CUDA build of torch)",
        "EMOCA runs on the CPU, fp32, batch 8"]
    assert info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["summary"].startswith("device: CPU (no GPU: CPU build of torch), fp32, batch 8")
    json.dumps(info)                                         # the worker sends it as JSON


def test_check_device_missing_driver():
    t = fake_torch("2.13.0+cu126", cuda="12.6")
    info = D.probe(t, driver=no_driver, system="Linux")
    assert info["cuda_problem"] == "no NVIDIA driver"
    assert "CUDA: not available: no NVIDIA driver" in info["lines"]
    assert any("nvidia.com/drivers" in t for t in info["lines"])
    assert info["lines"][0] == "torch 2.13.0+cu126 (CUDA 12.6 build)"


def test_check_device_old_driver():
    t = fake_torch("2.13.0+cu126", cuda="12.6",
                   warn="CUDA initialization: The NVIDIA driver on your system is too old "
                        "(found version 11040).")
    info = D.probe(t, driver=lambda: 11040, system="Linux")
    assert info["cuda_problem"] == "driver too old for CUDA 12.x (it supports CUDA 11.4)"
    assert any(t.startswith("Update the NVIDIA driver") for t in info["lines"])
    # the driver's own version says so too, without torch's warning
    info = D.probe(fake_torch("2.13.0+cu130", cuda="13.0"), driver=lambda: 12080)
    assert info["cuda_problem"].startswith("driver too old for CUDA 13.x")
    # a new enough driver that sees no GPU: hidden by CUDA_VISIBLE_DEVICES
    info = D.probe(fake_torch("2.13.0+cu126", cuda="12.6"), driver=lambda: 12080,
                   env={"CUDA_VISIBLE_DEVICES": ""}, system="Linux")
    assert "hides every GPU" in info["cuda_problem"]


def test_check_device_cuda_build_with_a_gpu():
    t = fake_torch("2.13.0+cu126", cuda="12.6", available=True)
    info = D.probe(t, driver=lambda: 12080, system="Linux")
    assert info["lines"] == [
        "torch 2.13.0+cu126 (CUDA 12.6 build)",
        "GPU: NVIDIA H100 80GB HBM3, 80.0 GB, compute 9.0, driver supports CUDA 12.8",
        "EMOCA runs on the GPU (NVIDIA H100 80GB HBM3), fp16 autocast, batch 256"]
    assert info["device"] == "cuda" and info["precision"] == "fp16"
    assert info["batch_size"] == 256 and info["gpu"]["memory_bytes"] == 80 * GB
    assert info["summary"] == ("device: NVIDIA H100 80GB HBM3 (80 GB, CUDA 12.6), fp16, "
                               "batch 256, torch 2.13.0+cu126")
    # the user asked for the CPU: the GPU is reported, the CPU used
    info = D.probe(t, "cpu", driver=lambda: 12080)
    assert info["device"] == "cpu" and info["precision"] == "fp32" and info["batch_size"] == 8
    assert info["gpu"]["name"] == "NVIDIA H100 80GB HBM3"
    # a small GPU gets a small batch
    t = fake_torch("2.13.0+cu126", cuda="12.6", available=True,
                   gpu=("NVIDIA GeForce GTX 1050", 2 * GB, 6, 1))
    assert D.probe(t, driver=lambda: 12020)["batch_size"] == 32


def test_batch_for_memory():
    assert [D.batch_for_memory(g * GB) for g in (80, 24, 8, 4, 2, 1, 0)] == \
        [256, 256, 128, 64, 32, 16, 16]


def test_check_device_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)          # import torch -> ImportError
    info = D.probe()
    assert info["torch"] is None and info["device"] == "cpu"
    assert info["lines"][0] == "torch: not installed in the worker Python"
    assert "Include torch" in info["lines"][1]


def test_mac_mps_and_device_requests():
    t = fake_torch("2.13.0", mps=(True, True))
    info = D.probe(t, system="Darwin", machine="arm64")
    assert info["device"] == "mps" and info["precision"] == "fp32"
    assert info["lines"][0] == "torch 2.13.0 (macOS build with MPS)"
    assert "CUDA: not available: macOS: PyTorch has no CUDA on a Mac" in info["lines"]
    assert "MPS (Apple GPU): available" in info["lines"]
    assert info["summary"].startswith("device: Apple GPU (MPS), fp32")
    # asked for what is not there: the CPU, with a warning saying why
    dev, warn = D.choose_device(fake_torch(), "mps")
    assert dev == "cpu" and "MPS" in warn and "CPU" in warn
    dev, warn = D.choose_device(fake_torch(), "cuda", driver=no_driver, system="Windows")
    assert dev == "cpu" and "CUDA was requested" in warn and "CPU build of torch" in warn
    assert D.choose_device(fake_torch(available=True, cuda="12.6"), "cuda:0") == ("cuda:0",
                                                                                   None)
    with pytest.raises(BadInput, match="device must be"):
        D.choose_device(fake_torch(), "tpu")


def test_driver_version_reader_answers_without_a_gpu():
    v = D.cuda_driver_version()
    assert v is None or isinstance(v, int)


# --------------------------------------------------------------------------------------
# The device command in the worker: cheap to import, JSON for the Check Device operator


def test_device_command_imports_nothing_heavy_until_run():
    code = ("import sys; sys.path.insert(0, %r); import emoca_blender.cli.main as c; "
            "c.build_parser().parse_args(['device', '--json']); "
            "print(sorted({'torch', 'cv2', 'mediapipe', 'bpy'} & set(sys.modules)))"
            % str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_device_command_through_the_worker():
    import torch

    job = worker.WorkerJob(worker.core_command(sys.executable, "device", "--device", "cuda"),
                           output=None).start()
    assert job.wait(timeout=120) == worker.DONE, job.log_text()
    done = [e for e in job.events if e.get("stage") == "done"]
    info = done[-1]["device"]
    assert info["torch"] == torch.__version__
    assert info["lines"] == job.messages                # each line also came as a message
    if not torch.cuda.is_available():
        assert info["device"] == "cpu" and "CUDA was requested" in info["warning"]
    r = subprocess.run([sys.executable, "-m", "emoca_blender", "device", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["summary"].startswith("device: ")


def test_check_device_operator_reads_the_worker_report():
    pytest.importorskip("bpy")
    from operators import ops_runtime

    job = worker.WorkerJob(worker.core_command(sys.executable, "device"), output=None).start()
    job.wait(timeout=120)
    info, lines = ops_runtime.device_result(job)
    assert info is not None and lines == info["lines"] and lines[0].startswith("torch ")
    bad = worker.WorkerJob([sys.executable, "-c", "import sys; print('error: no torch here', "
                            "file=sys.stderr); sys.exit(2)"], output=None).start()
    bad.wait(timeout=60)
    info, lines = ops_runtime.device_result(bad)
    assert info is None and lines == ["Check Device failed: No torch here"]


# --------------------------------------------------------------------------------------
# MPS for the EMOCA networks only where it gives the CPU's results


class _FakeRunner:
    def __init__(self, scale=1.0, fail=None):
        self.scale, self.fail = scale, fail

    def encode(self, x):
        if self.fail:
            raise NotImplementedError(self.fail)
        m = x.reshape(len(x), -1).mean(1, keepdims=True)
        return {"exp": np.tile(m, (1, 50)) * self.scale,
                "pose": np.tile(m, (1, 6)) * self.scale}


def test_mps_check_falls_back_when_an_op_is_missing_or_differs():
    from emoca_blender.backends import emoca_backend as EB

    missing = ("The operator 'aten::_upsample_bilinear2d_aa.out' is not currently implemented "
               "for the MPS device. If you want this op to be added in priority...")
    same = EB.verify_device(None, "mps", make_runner=lambda d: _FakeRunner())
    assert same is None
    why = EB.verify_device(None, "mps", make_runner=lambda d: _FakeRunner(
        fail=missing if d == "mps" else None))
    assert why.startswith("an operation EMOCA needs is missing on MPS (The operator "
                          "'aten::_upsample_bilinear2d_aa.out'")
    why = EB.verify_device(None, "mps", make_runner=lambda d: _FakeRunner(
        1.01 if d == "mps" else 1.0))
    assert why.startswith("MPS results differ from the CPU's") and "tolerance 0.001" in why
    tiny = EB.verify_device(None, "mps", make_runner=lambda d: _FakeRunner(
        1 + 1e-6 if d == "mps" else 1.0))
    assert tiny is None                                   # summation-order noise passes


def test_backend_on_mps_falls_back_to_the_cpu_with_a_message(monkeypatch):
    from emoca_blender.backends import emoca_backend as EB

    b = object.__new__(EB.EmocaBackend)
    b.ck = types.SimpleNamespace(net=object())
    b.device, b.device_warning, b.precision = "mps", None, "fp32"
    b._batch_asked, b.batch_size = 0, 8
    b.device_report = D.probe(fake_torch("2.13.0", mps=(True, True)), system="Darwin")
    assert b.device_line.startswith("device: Apple GPU (MPS)")
    monkeypatch.setattr(EB, "verify_device",
                        lambda net, dev: "an operation EMOCA needs is missing on MPS (x)")
    msgs = []
    with pytest.warns(RuntimeWarning, match="running EMOCA on the CPU"):
        b._check_mps(types.SimpleNamespace(message=msgs.append))
    assert b.device == "cpu" and b.batch_size == EB.CPU_BATCH
    assert b.device_warning == ("MPS (the Apple GPU): an operation EMOCA needs is missing on "
                                "MPS (x): running EMOCA on the CPU")
    assert b.device_line.startswith("device: CPU")


def test_mps_check_on_a_real_network_against_itself():
    """verify_device's default path (Runner, the real encode/decode_detail) on a small
    network, the CPU standing in for the device: identical results pass."""
    torch = pytest.importorskip("torch")
    from emoca_blender.backends import emoca_backend as EB

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, stride=8)

        def encode(self, x):
            f = self.conv(x).mean((2, 3))
            return {"exp": f.repeat(1, 13)[:, :50], "pose": f[:, :3].repeat(1, 2),
                    "detail": f.repeat(1, 32)}

        def decode_detail(self, jaw, exp, detail):
            return (jaw.sum(1) + exp.sum(1) + detail.sum(1))[:, None, None, None].expand(
                -1, 1, 8, 8)

    torch.manual_seed(0)
    assert EB.verify_device(Net(), "cpu") is None


# --------------------------------------------------------------------------------------
# In Blender: the installed extension's Check Device against the real worker, and the
# preferences for a GPU install


def _tx():
    import importlib.util
    spec = importlib.util.spec_from_file_location("test_extension_for_device",
                                                  Path(__file__).with_name("test_extension.py"))
    tx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tx)
    return tx


def test_check_device_and_gpu_install_in_blender(tmp_path):
    pytest.importorskip("bpy")
    import torch

    tx = _tx()
    built = tx.bx.build(ROOT, tmp_path / "dist")
    res = tx.run_blender_script(tmp_path, r'''
        install(enable=True)
        prefs = bpy.context.preferences.addons[MOD].preferences
        prefs.worker_python = sys.argv[2]
        ops_rt = importlib.import_module(MOD + ".operators.ops_runtime")
        out = {}
        r = bpy.ops.emoca.check_device()
        out["check"] = dict(result=sorted(r), status=prefs.device_status,
                            info=ops_rt.LAST["device"])
        out["panel"] = [x[1] for x in draw_all()["Capture"] if x[0] in ("label", "operator")]
        prefs.runtime_with_torch = True
        prefs.runtime_torch_target = 'cuda'
        prefs.runtime_cuda = 'cu130'
        bpy.ops.emoca.install_runtime(dry_run=True)
        out["plan"] = ops_rt.LAST["plan"].text()
        out["status"] = prefs.runtime_status
        result(out)
    ''', str(built), sys.executable, libs=tx.FAKE_LAYOUT)
    c = res["check"]
    assert c["result"] == ["FINISHED"], c
    assert c["info"]["torch"] == torch.__version__
    assert c["status"].splitlines() == c["info"]["lines"]
    assert c["status"].startswith(f"torch {torch.__version__}")
    panel = res["panel"]
    assert "emoca.check_device" in panel and c["info"]["lines"][-1] in panel
    assert any(t.endswith("torch==2.13.0+cu130 --index-url https://download.pytorch.org/whl/cu130")
               for t in res["plan"]), res["plan"]
    assert "torch: torch==2.13.0+cu130 (CUDA 13.0)" in res["status"]
