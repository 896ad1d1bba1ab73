"""What the worker's torch sees, and where the EMOCA networks run.

``python -m emoca_blender device [--device auto] [--json]`` is what the add-on's *Check
Device* button runs in the worker Python: torch's version and build, whether CUDA is usable
or why not ("CPU build", "no NVIDIA driver", "driver too old for CUDA 12.x", a hidden GPU),
the GPU's name and memory, Apple's MPS on a Mac, and the device, precision and batch size
the EMOCA backend will use. The capture's first progress line is :func:`summary` of the
same report.

Importing this module imports nothing heavy: torch is imported by :func:`probe` (or passed
in: the tests hand it fake module objects to simulate a CPU build, a missing driver, a CUDA
build with a GPU); the NVIDIA driver's CUDA version is read with ``ctypes`` from the driver
library itself (``cuDriverGetVersion`` needs no CUDA context), independent of torch.
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
import warnings

from .errors import BadInput

GIB = float(1 << 30)
#: Memory budgeted per crop of a GPU batch (three ResNet-50 encoders in fp16, activations,
#: the fp32 input and cuDNN's workspace; measured peaks are a few MB, this leaves room for
#: other programs on the GPU). Half of the GPU's memory goes to batches.
PER_CROP_BYTES = 24 << 20
MIN_GPU_BATCH, MAX_GPU_BATCH = 16, 256
CPU_BATCH = 8
DEVICES = ("auto", "cpu", "cuda", "mps")


# --------------------------------------------------------------------------------------
# Pure helpers


def batch_for_memory(total_bytes: float) -> int:
    """The EMOCA batch size for a GPU with ``total_bytes`` of memory: the largest power of
    two in [16, 256] whose crops fit in half of it (an 80 GB H100: 256; 8 GB: 128; 4 GB: 64)."""
    budget = 0.5 * max(float(total_bytes or 0), 0.0)
    b = MAX_GPU_BATCH
    while b > MIN_GPU_BATCH and b * PER_CROP_BYTES > budget:
        b //= 2
    return b


def cuda_text(version: int | None) -> str:
    """12040 -> '12.4' (CUDA's integer versions)."""
    if not version:
        return "?"
    return f"{version // 1000}.{(version % 1000) // 10}"


def cuda_driver_version() -> int | None:
    """The highest CUDA version the installed NVIDIA driver supports (e.g. 12040 for 12.4),
    read from the driver library; None when there is no NVIDIA driver, 0 when its library
    is there but does not answer."""
    if sys.platform == "darwin":
        return None
    names = ("nvcuda.dll",) if os.name == "nt" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.WinDLL(name) if os.name == "nt" else ctypes.CDLL(name)  # type: ignore[attr-defined]
        except OSError:
            continue
        v = ctypes.c_int(0)
        try:
            rc = lib.cuDriverGetVersion(ctypes.byref(v))
        except (AttributeError, OSError):
            return 0
        return int(v.value) if rc == 0 else 0
    return None


def _major(cuda: str | None) -> int:
    try:
        return int(str(cuda).split(".")[0])
    except ValueError:
        return 0


def cuda_problem(torch, driver: int | None, torch_warning: str = "",
                 system: str | None = None, env=None) -> str:
    """Why torch has no usable CUDA device, in a few words."""
    system = system or platform.system()
    env = os.environ if env is None else env
    build = getattr(getattr(torch, "version", None), "cuda", None)
    if system == "Darwin":
        return "macOS: PyTorch has no CUDA on a Mac"
    if not build:
        return "CPU build of torch"
    if driver is None:
        return "no NVIDIA driver"
    if "too old" in torch_warning or (driver and driver < _major(build) * 1000):
        has = f" (it supports CUDA {cuda_text(driver)})" if driver else ""
        return f"driver too old for CUDA {_major(build)}.x{has}"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    why = f"the NVIDIA driver (CUDA {cuda_text(driver)}) reports no usable GPU"
    if torch_warning:
        why += f" ({torch_warning.strip().splitlines()[0][:160]})"
    return why


def _cuda_available(torch) -> tuple[bool, str]:
    """torch.cuda.is_available(), with what torch warned while finding out (an old driver
    is only a warning there)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ok = bool(torch.cuda.is_available())
        except Exception as e:  # noqa: BLE001 - a broken CUDA install is an answer too
            return False, str(e)
    return ok, " ".join(str(w.message) for w in caught)


def _mps(torch) -> tuple[bool, bool]:
    """(built, available) of Apple's Metal backend."""
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    if mps is None:
        return False, False
    try:
        return bool(mps.is_built()), bool(mps.is_available())
    except Exception:  # noqa: BLE001
        return False, False


# --------------------------------------------------------------------------------------
# Device choice (the EMOCA backend's resolve_device delegates here)


def choose_device(torch, requested: str = "auto", *, driver=cuda_driver_version,
                  system: str | None = None) -> tuple[str, str | None]:
    """(device, warning or None). 'auto': CUDA when torch sees a GPU, else the Apple GPU
    (MPS) when there is one, else the CPU. 'cuda' or 'mps' without one falls back to the CPU
    with a warning saying why (never an error: the capture still runs)."""
    req = (requested or "auto").lower()
    if req not in DEVICES and not req.startswith("cuda:"):
        raise BadInput(f"device must be auto, cpu, cuda or mps, got {requested!r}")
    if req == "cpu":
        return "cpu", None
    has_cuda, warned = _cuda_available(torch)
    _, has_mps = _mps(torch)
    if req == "auto":
        return ("cuda" if has_cuda else "mps" if has_mps else "cpu"), None
    if req.startswith("cuda"):
        if has_cuda:
            return req, None
        why = cuda_problem(torch, driver(), warned, system)
        return "cpu", (f"CUDA was requested but it is not available ({why}): running EMOCA "
                       "on the CPU (about 1-3 frames/s instead of hundreds)")
    if has_mps:
        return "mps", None
    return "cpu", ("MPS (the Apple GPU) was requested but this torch has none "
                   f"({'not an Apple-silicon Mac' if _mps(torch)[0] else 'not built with MPS'})"
                   ": running EMOCA on the CPU")


def precision_for(device: str, precision: str = "auto") -> str:
    """'fp16' (CUDA autocast), 'bf16' (autocast) or 'fp32'. Auto: fp16 on CUDA; fp32 on the
    CPU (half-precision autocast is slower there) and on MPS (the precision its results
    were checked against the CPU's in)."""
    p = (precision or "auto").lower()
    if p == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if p not in ("fp16", "bf16", "fp32"):
        raise BadInput(f"precision must be auto, fp16, bf16 or fp32, got {precision!r}")
    return p


# --------------------------------------------------------------------------------------
# The report


def probe(torch=None, requested: str = "auto", *, driver=cuda_driver_version,
          system: str | None = None, machine: str | None = None, env=None) -> dict:
    """What this Python's torch sees (a JSON-able dict with ``lines`` and ``summary``).
    ``torch`` defaults to importing it; a missing torch is a report, not an error."""
    system = system or platform.system()
    machine = machine or platform.machine()
    info: dict = {"python": sys.executable, "platform": f"{system} {machine}",
                  "torch": None, "torch_cuda": None, "cuda_available": False,
                  "cuda_problem": None, "driver_cuda": None, "gpu": None,
                  "mps_built": False, "mps_available": False, "requested": requested,
                  "device": "cpu", "precision": "fp32", "batch_size": CPU_BATCH,
                  "warning": None}
    if torch is None:
        try:
            import torch  # noqa: PLW0621 - the real one, in the worker
        except ImportError as e:
            info["cuda_problem"] = (f"torch is not installed in this Python ({e}): Install "
                                    "Runtime with 'Include torch' (only the FLAME and EMOCA "
                                    "backends need it)")
            return finish(info)
    info["torch"] = str(getattr(torch, "__version__", "?"))
    info["torch_cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    has_cuda, warned = _cuda_available(torch)
    info["cuda_available"] = has_cuda
    drv = driver()
    info["driver_cuda"] = cuda_text(drv) if drv else None
    if has_cuda:
        try:
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": str(p.name), "memory_bytes": int(p.total_memory),
                           "capability": f"{p.major}.{p.minor}",
                           "count": int(torch.cuda.device_count())}
        except Exception as e:  # noqa: BLE001
            info["cuda_available"] = False
            info["cuda_problem"] = f"the GPU cannot be opened ({e})"
    else:
        info["cuda_problem"] = cuda_problem(torch, drv, warned, system, env)
    info["mps_built"], info["mps_available"] = _mps(torch)
    device, warning = choose_device(torch, requested, driver=lambda: drv, system=system)
    if device.startswith("cuda") and not info["cuda_available"]:
        device = "cpu"
    info["device"], info["warning"] = device, warning
    info["precision"] = precision_for(device)
    info["batch_size"] = (batch_for_memory(info["gpu"]["memory_bytes"])
                          if device.startswith("cuda") else CPU_BATCH)
    return finish(info)


def finish(info: dict) -> dict:
    """(Re)write the report's ``lines`` and ``summary`` from its fields."""
    info["lines"] = lines(info)
    info["summary"] = summary(info)
    return info


def _gpu_text(gpu: dict) -> str:
    return (f"{gpu['name']}, {gpu['memory_bytes'] / GIB:.1f} GB, compute {gpu['capability']}"
            + (f" ({gpu['count']} GPUs, using the first)" if gpu.get("count", 1) > 1 else ""))


def _device_text(info: dict) -> str:
    d = info["device"]
    if d.startswith("cuda") and info.get("gpu"):
        return f"the GPU ({info['gpu']['name']})"
    if d == "mps":
        return "the Apple GPU (MPS; the CPU where an operation is missing or differs)"
    return "the CPU"


#: What to do about each reason CUDA is not available (the line under it in Check Device).
HINTS = (("CPU build", "For the GPU: Install Runtime with Run On: NVIDIA GPU (a CUDA build "
                       "of torch)"),
         ("no NVIDIA driver", "Install the NVIDIA driver for your GPU (nvidia.com/drivers)"),
         ("driver too old", "Update the NVIDIA driver, or Install Runtime with an older CUDA "
                            "(12.6 runs on drivers from 525/527 on)"))


def lines(info: dict) -> list[str]:
    """The Check Device text: a few short lines."""
    out = []
    if not info.get("torch"):
        out.append("torch: not installed in the worker Python")
        out.append(info.get("cuda_problem") or "")
        out.append("EMOCA/FLAME backends: unavailable; MediaPipe (the default) runs on the CPU")
        return [t for t in out if t]
    build = (f"CUDA {info['torch_cuda']} build" if info.get("torch_cuda")
             else "CPU build" if not info["platform"].startswith("Darwin")
             else "macOS build" + (" with MPS" if info.get("mps_built") else ""))
    out.append(f"torch {info['torch']} ({build})")
    if info.get("cuda_available") and info.get("gpu"):
        drv = f", driver supports CUDA {info['driver_cuda']}" if info.get("driver_cuda") else ""
        out.append(f"GPU: {_gpu_text(info['gpu'])}{drv}")
    else:
        why = info.get("cuda_problem") or "unknown reason"
        out.append(f"CUDA: not available: {why}")
        hint = next((h for k, h in HINTS if why.startswith(k)), "")
        if hint and not info["platform"].startswith("Darwin"):
            out.append(hint)
    if info["platform"].startswith("Darwin"):
        out.append("MPS (Apple GPU): " + ("available" if info.get("mps_available") else
                                          "not available" if info.get("mps_built") else
                                          "not in this torch build"))
    prec = {"fp16": "fp16 autocast", "bf16": "bf16 autocast", "fp32": "fp32"}[info["precision"]]
    out.append(f"EMOCA runs on {_device_text(info)}, {prec}, batch {info['batch_size']}")
    if info.get("warning"):
        out.append(f"warning: {info['warning']}")
    return out


def summary(info: dict) -> str:
    """One line: the capture's first progress message."""
    if not info.get("torch"):
        return "device: no torch in the worker Python"
    d = info["device"]
    if d.startswith("cuda") and info.get("gpu"):
        where = f"{info['gpu']['name']} ({info['gpu']['memory_bytes'] / GIB:.0f} GB, " \
                f"CUDA {info.get('torch_cuda')})"
    elif d == "mps":
        where = "Apple GPU (MPS)"
    else:
        where = f"CPU (no GPU: {info.get('cuda_problem') or 'CPU requested'})"
    return (f"device: {where}, {info['precision']}, batch {info['batch_size']}, "
            f"torch {info['torch']}")


# --------------------------------------------------------------------------------------
# CLI: python -m emoca_blender device


def add_parser(sub) -> None:
    """Register the ``device`` command on the CLI's subparsers."""
    p = sub.add_parser("device", help="what the worker's torch sees (GPU, CUDA, precision)",
                       description="Report torch's version and build, whether CUDA (or "
                                   "Apple's MPS) is usable and why not, the GPU's name and "
                                   "memory, and the device, precision and batch size the "
                                   "EMOCA backend will use. Imports torch, nothing else.")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="the device a capture would ask for (default auto)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_device)


def cmd_device(args, progress) -> int:
    info = probe(requested=args.device)
    if getattr(progress, "mode", "") == "json":       # the Blender worker
        for line in info["lines"]:
            progress.message(line)
        progress.done(output=None, device=info)
    elif args.json:
        print(json.dumps(info))
    else:
        print("\n".join(info["lines"]))
    return 0
