"""The worker's runtime: model-file checks for the preferences, and the "Install runtime" plan.

bpy-free and standard-library only, so that (1) drawing the preferences never imports torch,
numpy or pickle-loads anything: model files are judged by existence, size and magic bytes;
(2) this file also runs as a plain script in any Python, which is how the Install Runtime
operator executes its plan in a separate process::

    python runtime.py run PLAN.json        # runs the plan's commands, JSON progress on stdout

Model files (all user-supplied, never bundled, see README "Licences"):

- FLAME folder: ``generic_model.pkl`` (FLAME 2020) or ``flame2023.pkl`` /
  ``flame2023_no_jaw.pkl`` (FLAME 2023), a Python pickle of about 50-100 MB.
- EMOCA checkpoint: a PyTorch Lightning ``.ckpt`` (a ``torch.save`` zip holding
  ``*/data.pkl``), several hundred MB; a folder is searched for ``*.ckpt``.
- DECA checkpoint: ``deca_model.tar`` (a ``torch.save`` file: zip, legacy pickle or legacy
  tar, despite its name).

The runtime is a virtual environment in the extension's user folder
(``bpy.utils.extension_path_user``): ``BASE_PYTHON -m venv DIR`` and ``DIR/bin/python -m pip
install`` of the pinned requirements (``requirements.txt`` without the Blender-only and
test-only pins, and ``requirements-nodeps.txt`` with ``--no-deps``). No admin rights are
needed. pip reaches the network unless a local wheel folder is given (``--no-index
--find-links``); the operator asks ``bpy.app.online_access`` first.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

EXTENSION_ROOT = Path(__file__).resolve().parent.parent

# States of a model-file check (the icon the preferences show for each).
UNSET, OK, MISSING, WRONG = "unset", "ok", "missing", "wrong"
ICONS = {UNSET: "DOT", OK: "CHECKMARK", MISSING: "ERROR", WRONG: "CANCEL"}

MB = 1 << 20


@dataclass(frozen=True)
class FileStatus:
    """One line for the preferences: ``state`` (unset/ok/missing/wrong), a short ``text``
    saying what was found or what is wrong, and the file that was judged."""

    state: str
    text: str
    path: str = ""

    @property
    def ok(self) -> bool:
        return self.state == OK

    @property
    def icon(self) -> str:
        return ICONS[self.state]


# --------------------------------------------------------------------------------------
# What is a file, from its first bytes (no unpickling, no torch)

# torch.save's legacy format: a pickle (protocol 2) of this magic number first.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def sniff(path: str | os.PathLike) -> str:
    """The kind of a file from its first bytes: ``zip``, ``torch-legacy``, ``pickle``,
    ``tar``, ``npy``, ``html``, ``text``, ``empty``, ``unknown`` or ``unreadable``."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return "unreadable"
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch-legacy"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    low = head.lstrip()[:64].lower()
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "html"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown"


def _size_text(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB / 10 else f"{n} bytes"


def _zip_members(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as z:  # reads the central directory only
            return z.namelist()
    except (OSError, zipfile.BadZipFile):
        return None


def _torch_file_problem(path: Path, min_size: int, what: str) -> str | None:
    """Why ``path`` is not a ``torch.save`` file of at least ``min_size`` bytes, or None."""
    kind = sniff(path)
    size = path.stat().st_size
    if kind == "html":
        return f"{path.name} is a web page, not {what} (the download failed: download it again)"
    if kind in ("empty", "text", "unknown", "npy", "unreadable"):
        return f"{path.name} is not {what} (it is {'empty' if kind == 'empty' else kind + ' data'})"
    if kind == "zip":
        names = _zip_members(path)
        if names is None:
            return f"{path.name} is a damaged zip file (download it again)"
        if not any(n.endswith("data.pkl") for n in names):
            return (f"{path.name} is a zip archive, not {what}: extract it and choose the "
                    f"file inside")
    if size < min_size:
        return (f"{path.name} is only {_size_text(size)} ({what} is at least "
                f"{_size_text(min_size)}): an incomplete download?")
    return None


# --------------------------------------------------------------------------------------
# Model files

FLAME_MODELS = (  # (file name, label), in order of preference
    ("generic_model.pkl", "FLAME 2020"),
    ("flame2023.pkl", "FLAME 2023"),
    ("flame2023_no_jaw.pkl", "FLAME 2023 (no jaw)"),
    ("flame2023_Open.pkl", "FLAME 2023 Open"),
    ("female_model.pkl", "FLAME 2020 female"),
    ("male_model.pkl", "FLAME 2020 male"),
)
FLAME_MIN_SIZE = 10 * MB  # generic_model.pkl (2020) is about 53 MB
CKPT_MIN_SIZE = 10 * MB   # EMOCA v2 checkpoints are several hundred MB, deca_model.tar ~ 430 MB


def find_flame_model(folder: str | os.PathLike) -> tuple[Path, str] | None:
    """The FLAME model file in ``folder`` (or one level below, as the downloads unpack)."""
    folder = Path(folder)
    for sub in (folder, *sorted(p for p in _subdirs(folder))):
        for name, label in FLAME_MODELS:
            p = sub / name
            if p.is_file():
                return p, label
    return None


def _subdirs(folder: Path):
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def check_flame_folder(folder: str) -> FileStatus:
    """Status of the FLAME model folder preference."""
    if not folder:
        return FileStatus(UNSET, "Not set (only the FLAME backends need it)")
    p = Path(folder)
    if not p.is_dir():
        return FileStatus(MISSING, f"Folder not found: {folder}", folder)
    found = find_flame_model(p)
    if found is None:
        zips = sorted(q.name for q in p.glob("*.zip") if "flame" in q.name.lower())
        if zips:
            return FileStatus(WRONG, f"Found {zips[0]}: extract it into this folder", folder)
        return FileStatus(MISSING, "No FLAME model in this folder (generic_model.pkl or "
                          "flame2023.pkl)", folder)
    path, label = found
    kind = sniff(path)
    size = path.stat().st_size
    if kind != "pickle":
        what = "a web page (the download failed)" if kind == "html" else f"{kind} data"
        return FileStatus(WRONG, f"{path.name} is not a FLAME pickle: it is {what}", str(path))
    if size < FLAME_MIN_SIZE:
        return FileStatus(WRONG, f"{path.name} is only {_size_text(size)}: an incomplete "
                          "download?", str(path))
    extras = [n for n in ("landmark_embedding.npy", "mediapipe_landmark_embedding.npz")
              if (path.parent / n).is_file() or (p / n).is_file()]
    text = f"{label}: {path.name} ({_size_text(size)})"
    if extras:
        text += ", " + ", ".join(extras)
    return FileStatus(OK, text, str(path))


def find_checkpoint(path: Path, suffixes: tuple[str, ...], max_depth: int = 6) -> Path | None:
    """The first checkpoint below a folder (sorted, shallowest first)."""
    best = None
    root_depth = len(path.parts)
    for dirpath, dirnames, filenames in os.walk(path):
        depth = len(Path(dirpath).parts) - root_depth
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) \
            if depth < max_depth else []
        for f in sorted(filenames):
            if f.endswith(suffixes):
                cand = Path(dirpath) / f
                if best is None or len(cand.parts) < len(best.parts):
                    best = cand
        if best is not None:
            return best
    return best


def check_checkpoint(path: str, kind: str = "emoca") -> FileStatus:
    """Status of the EMOCA (``.ckpt``) or DECA (``deca_model.tar``) checkpoint preference.
    A folder is searched for the checkpoint."""
    what = {"emoca": "an EMOCA checkpoint", "deca": "a DECA checkpoint"}[kind]
    suffixes = (".ckpt",) if kind == "emoca" else (".tar", ".pt", ".pth")
    if not path:
        return FileStatus(UNSET, "Not set (only the EMOCA backend needs it)")
    p = Path(path)
    if p.is_dir():
        found = find_checkpoint(p, suffixes)
        if found is None:
            return FileStatus(MISSING, f"No {'/'.join(suffixes)} file in {p.name}", path)
        p = found
    elif not p.is_file():
        return FileStatus(MISSING, f"File not found: {path}", path)
    problem = _torch_file_problem(p, CKPT_MIN_SIZE, what)
    if problem:
        return FileStatus(WRONG, problem, str(p))
    fmt = {"zip": "torch zip", "torch-legacy": "legacy torch", "tar": "legacy torch tar",
           "pickle": "pickle"}.get(sniff(p), sniff(p))
    return FileStatus(OK, f"{p.name} ({_size_text(p.stat().st_size)}, {fmt})", str(p))


#: How a message names each model-file preference (the kinds of ``worker.Backend.needs``).
MODEL_PREFS = {"flame": "the FLAME folder", "emoca": "the EMOCA checkpoint"}
#: What the FLAME backends read beside the FLAME model besides the model itself.
FLAME_CAPTURE_FILES = ("mediapipe_landmark_embedding.npz",)


def capture_model_args(label: str, needs: tuple[str, ...], statuses: dict[str, FileStatus]
                       ) -> tuple[dict[str, str], str | None]:
    """The model arguments of a capture with a backend (``label``) that needs ``needs``
    (``flame``, ``emoca``), from the preferences' statuses: ``({"flame_dir": ...,
    "emoca_checkpoint": ...}, None)``, or ``({}, problem)`` with one sentence saying what is
    missing or wrong and where to fix it. ``flame_dir`` is the folder of the FLAME model file
    found (the preference or the folder below it); ``emoca_checkpoint`` the file found."""
    unset = [k for k in needs if statuses[k].state == UNSET]
    if unset:
        return {}, (f"{label} needs " + " and ".join(MODEL_PREFS[k] for k in unset)
                    + " in the add-on preferences")
    for k in needs:
        st = statuses[k]
        if not st.ok:
            return {}, f"{label}: {MODEL_PREFS[k]} (add-on preferences): {st.text}"
    args: dict[str, str] = {}
    if "flame" in needs:
        model = Path(statuses["flame"].path)
        lacking = [n for n in FLAME_CAPTURE_FILES if not (model.parent / n).is_file()]
        if lacking:
            return {}, (f"{label}: the FLAME folder has no {', '.join(lacking)} beside "
                        f"{model.name}: put it there (add-on preferences: FLAME Folder)")
        args["flame_dir"] = str(model.parent)
    if "emoca" in needs:
        args["emoca_checkpoint"] = statuses["emoca"].path
    return args, None


# --------------------------------------------------------------------------------------
# The worker environment

#: Pins that the worker does not need: Blender brings bpy itself; pytest is for the tests.
NOT_FOR_WORKER = ("bpy", "pytest")
#: Pins that only the FLAME/EMOCA backends need (large downloads): installed on request.
TORCH_ONLY = ("torch",)
#: What the worker must import after the install (the MediaPipe backend).
CHECK_IMPORTS = ("numpy", "cv2", "mediapipe", "scipy")

#: The PyTorch wheel index (pip --index-url): CUDA builds of torch live in its ``cuXYZ``
#: folders, the CPU-only build in ``cpu``. A preference the user can edit (a mirror).
TORCH_INDEX = "https://download.pytorch.org/whl"
#: The CUDA builds of the pinned torch (2.13: CUDA 12.6 legacy, 13.0 stable, 13.2
#: experimental, per PyTorch's release matrix), as (tag, label, description); the first is
#: the default: it runs on the most GPUs and drivers.
CUDA_BUILDS = (
    ("cu126", "CUDA 12.6", "Any NVIDIA GPU from Maxwell (GTX 900) on, driver 525 (Linux) / "
                           "527 (Windows) or newer: the safe choice"),
    ("cu130", "CUDA 13.0", "Turing (RTX 20 series) and newer, driver 580 or newer"),
    ("cu132", "CUDA 13.2", "Turing and newer with a driver for CUDA 13.2 (PyTorch calls this "
                           "build experimental)"),
)
#: Where the worker's torch runs: what Install Runtime asks (Run On).
TORCH_TARGETS = ("cpu", "cuda")
_INDEX_TAG = re.compile(r"/(cpu|cu\d{3}|rocm[\d.]+)/?$")

_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def read_requirements(path: str | os.PathLike) -> list[str]:
    """The requirement lines of a pip requirements file (comments and blanks dropped)."""
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


def requirement_name(req: str) -> str:
    m = _REQ_NAME.match(req)
    return m.group(1).lower().replace("_", "-") if m else ""


def worker_requirements(root: str | os.PathLike = EXTENSION_ROOT, with_torch: bool = False
                        ) -> tuple[list[str], list[str]]:
    """``(pinned, nodeps)``: the worker's pins from ``requirements.txt`` (without bpy and
    pytest; torch only ``with_torch``) and ``requirements-nodeps.txt``."""
    root = Path(root)
    skip = set(NOT_FOR_WORKER) | (set() if with_torch else set(TORCH_ONLY))
    reqs = [r for r in read_requirements(root / "requirements.txt")
            if requirement_name(r) not in skip]
    nodeps = read_requirements(root / "requirements-nodeps.txt")
    return reqs, nodeps


def torch_pin(root: str | os.PathLike = EXTENSION_ROOT) -> str:
    """torch's pin in ``requirements.txt`` (``torch==2.13.0``)."""
    for r in read_requirements(Path(root) / "requirements.txt"):
        if requirement_name(r) == "torch":
            return r.split(";")[0].strip()
    return "torch"


def torch_index_url(index: str, tag: str) -> str:
    """The index folder of one torch build: ``index/tag``, or ``index`` as it is when it
    already names a build's folder (``.../whl/cu126``: the user pasted the full URL)."""
    index = (index or TORCH_INDEX).strip()
    if _INDEX_TAG.search(index):
        return index.rstrip("/")
    return index.rstrip("/") + "/" + tag


def is_macos(system: str | None = None) -> bool:
    import platform

    return (system or platform.system()) == "Darwin"


def torch_choice_text(target: str = "cpu", cuda: str = CUDA_BUILDS[0][0],
                      index: str = TORCH_INDEX, system: str | None = None,
                      root: str | os.PathLike = EXTENSION_ROOT) -> str:
    """One line saying which torch Install Runtime installs (the preferences show it)."""
    pin = torch_pin(root)
    if is_macos(system):
        return (f"{pin} from PyPI: the macOS build (the Apple GPU through MPS on Apple "
                "silicon, else the CPU; no CUDA on a Mac)")
    tag = cuda if target == "cuda" else "cpu"
    what = dict((t, lbl) for t, lbl, _ in CUDA_BUILDS).get(tag, tag) if target == "cuda" \
        else "CPU only"
    return f"{pin}+{tag} ({what}) from {torch_index_url(index, tag)}"


def venv_python_of(venv: str | os.PathLike) -> Path:
    venv = Path(venv)
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@dataclass
class InstallPlan:
    """What Install Runtime runs, in order. ``commands`` are argv lists; nothing else runs."""

    venv: str
    python: str
    base_python: str
    commands: list[list[str]] = field(default_factory=list)
    needs_network: bool = True
    notes: list[str] = field(default_factory=list)

    def text(self) -> list[str]:
        """The commands as a user would type them (one line each)."""
        return [subprocess.list2cmdline(c) if os.name == "nt" else
                " ".join(_shell_quote(a) for a in c) for c in self.commands]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _shell_quote(s: str) -> str:
    import shlex
    return shlex.quote(s)


def plan_install(venv: str | os.PathLike, base_python: str | os.PathLike | None = None, *,
                 root: str | os.PathLike = EXTENSION_ROOT, with_torch: bool = False,
                 wheel_dir: str | os.PathLike | None = None, recreate: bool = False,
                 torch_target: str = "cpu", cuda: str = CUDA_BUILDS[0][0],
                 torch_index: str = TORCH_INDEX, system: str | None = None
                 ) -> InstallPlan:
    """The commands that create (or repair) the worker environment in ``venv``.

    The venv is created with ``base_python`` (default: the Python running this, i.e.
    Blender's) when its interpreter is missing, or re-created with ``--clear`` when
    ``recreate``; pip then installs the pins (already-satisfied ones are skipped, wrong
    versions replaced: that is the repair), and the worker's imports are checked.

    torch (``with_torch``) is the pinned version built for where the worker runs
    (``torch_target``): on Windows and Linux from the PyTorch wheel index ``torch_index``,
    ``torch==2.13.0+cpu`` from its ``cpu`` folder or ``torch==2.13.0+cu126`` (``cuda``)
    from ``cu126``, the official ``pip install torch --index-url .../whl/cu126``; the
    build's local tag is pinned so that a repair swaps a CPU build for a CUDA one and back.
    On macOS (``system``, default this machine's) the PyPI build (MPS on Apple silicon).
    From a wheel folder: whatever torch 2.13.0 it holds for the CPU, the ``+cu126`` wheel
    for the GPU.
    """
    venv = Path(venv)
    base = str(base_python or sys.executable)
    py = venv_python_of(venv)
    if torch_target not in TORCH_TARGETS:
        raise ValueError(f"torch_target must be one of {TORCH_TARGETS}, got {torch_target!r}")
    mac = is_macos(system)
    # torch in the same pip run as the other pins when it comes from the same place (PyPI on
    # a Mac; a wheel folder, for the CPU); from the PyTorch index (or the folder's CUDA
    # wheel) in a command of its own.
    separate_torch = with_torch and not mac and (wheel_dir is None or torch_target == "cuda")
    reqs, nodeps = worker_requirements(root, with_torch and not separate_torch)
    if not reqs:
        raise FileNotFoundError(f"no requirements.txt in {root}: cannot plan the install")
    plan = InstallPlan(venv=str(venv), python=str(py), base_python=base,
                       needs_network=wheel_dir is None)
    if recreate:
        plan.commands.append([base, "-m", "venv", "--clear", str(venv)])
    elif not py.is_file():
        plan.commands.append([base, "-m", "venv", str(venv)])
    else:
        plan.notes.append(f"{py} exists: repairing (pip reinstalls what is missing or wrong)")
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    if wheel_dir is not None:
        pip += ["--no-index", "--find-links", str(wheel_dir)]
    plan.commands.append(pip + reqs)
    if nodeps:
        plan.commands.append(pip + ["--no-deps"] + nodeps)
    pin = torch_pin(root)
    if separate_torch:
        tag = cuda if torch_target == "cuda" else "cpu"
        if wheel_dir is None:
            url = torch_index_url(torch_index, tag)
            plan.commands.append(pip + [f"{pin}+{tag}", "--index-url", url])
        else:
            plan.commands.append(pip + [f"{pin}+{tag}"])
            plan.notes.append(
                f"the wheel folder must hold {pin}+{tag} and its nvidia-* wheels: on a "
                f"machine online, pip download {pin}+{tag} --index-url "
                f"{torch_index_url(torch_index, tag)} -d FOLDER")
    check = list(CHECK_IMPORTS)
    done = "print('worker runtime OK')"
    if with_torch:
        check.append("torch")
        done = ("print('worker runtime OK: torch', torch.__version__, 'CUDA', "
                "torch.version.cuda, 'GPU', torch.cuda.is_available())")
        what = torch_choice_text(torch_target, cuda, torch_index, system, root)
        if wheel_dir is not None:
            what = (what.split(" from ")[0] if separate_torch else
                    f"{pin} (the build the folder holds)") + f" from the wheel folder {wheel_dir}"
        plan.notes.append("torch: " + what)
        if mac and torch_target == "cuda":
            plan.notes.append("macOS has no CUDA: the macOS build of torch is installed")
    plan.commands.append([str(py), "-c", "import " + ", ".join(check) + "; " + done])
    if not with_torch:
        plan.notes.append("torch is not installed (only the FLAME/EMOCA backends need it)")
    return plan


def run_plan(commands: list[list[str]], out=None) -> int:
    """Run the commands in order; JSON progress lines on ``out`` (the worker protocol,
    see worker.py), the commands' own output passed through as plain lines. Returns the
    exit code: 0, or the first failing command's."""
    out = out or sys.stdout
    n = len(commands)
    t0 = time.monotonic()

    def emit(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    for i, cmd in enumerate(commands):
        emit({"stage": "install", "frame": i, "total": n,
              "fps": 0.0, "eta": None})
        emit({"stage": "message", "message": f"step {i + 1}/{n}: {Path(cmd[0]).name} "
              f"{' '.join(cmd[1:4])}..."})
        out.write("$ " + " ".join(_shell_quote(a) for a in cmd) + "\n")
        out.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace")
        except OSError as e:
            print(f"error: step {i + 1} ({cmd[0]}) could not start: {e.strerror or e}",
                  file=sys.stderr)
            return 1
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line if line.endswith("\n") else line + "\n")
            out.flush()
        rc = proc.wait()
        if rc != 0:
            print(f"error: step {i + 1} failed (exit code {rc}): "
                  f"{' '.join(cmd[:5])}...", file=sys.stderr)
            return rc if rc > 0 else 1
    emit({"stage": "install", "frame": n, "total": n, "fps": 0.0, "eta": 0.0})
    emit({"stage": "done", "output": None, "seconds": round(time.monotonic() - t0, 1)})
    return 0


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Run an EMOCA worker-runtime install plan")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run the commands of a plan (JSON from InstallPlan)")
    p.add_argument("plan")
    args = ap.parse_args(argv)
    try:
        plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
        commands = [list(map(str, c)) for c in plan["commands"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: cannot read the plan {args.plan}: {e}", file=sys.stderr)
        return 2
    return run_plan(commands)


if __name__ == "__main__":
    sys.exit(main())
