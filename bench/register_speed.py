"""Bench: how long enabling the installed extension takes in Blender (bpy module).

Timed, each in a fresh Blender process with a private HOME (the way a user's first enable
after start-up runs): ``addon_utils.enable`` of the installed extension (import of the
operators and panels + register), then disable/enable again (modules already imported).
Not timed: building and installing the zip. Target: first enable <= 0.2 s (median of 3
processes), re-enable <= 0.2 s. ``tests/test_extension.py`` checks what registration
imports (nothing heavy, not the core); the time is judged here, not in a test.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.ROOT / "tools"))
import build_extension  # noqa: E402

TARGET_S = 0.2
N_PROCESSES = 3

SCRIPT = textwrap.dedent(r'''
    import json, sys, time
    import bpy, addon_utils
    MOD = "bl_ext.user_default.emoca_blender"
    r = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default",
                                                 enable_on_install=False)
    assert r == {"FINISHED"}, r
    t0 = time.perf_counter()
    addon_utils.enable(MOD, default_set=True, handle_error=None)
    first = time.perf_counter() - t0
    addon_utils.disable(MOD, default_set=True, handle_error=None)
    t0 = time.perf_counter()
    addon_utils.enable(MOD, default_set=True, handle_error=None)
    again = time.perf_counter() - t0
    ok = hasattr(bpy.types, "EMOCA_OT_capture")
    addon_utils.disable(MOD, default_set=True, handle_error=None)
    print("\nRESULT " + json.dumps(dict(first=first, again=again, ok=ok)), flush=True)
''')


def _one(zip_path: Path, work: Path) -> dict:
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    script = work / "enable.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BLENDER_", "PYTHONPATH", "PYTHONHOME"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    r = subprocess.run([sys.executable, str(script), str(zip_path)], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"Blender session failed (exit {r.returncode}): {r.stderr[-400:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    if not res["ok"]:
        raise RuntimeError("the extension did not register its operators")
    return res


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="emoca_register_") as tmp:
        tmp = Path(tmp)
        zip_path = build_extension.build(common.ROOT, tmp / "dist")
        runs = [_one(zip_path, tmp / f"p{i}") for i in range(N_PROCESSES)]
    first = statistics.median(r["first"] for r in runs)
    again = statistics.median(r["again"] for r in runs)
    case = f"installed extension, median of {N_PROCESSES} fresh processes"
    return [common.row("register_speed", case, "first enable (import + register)",
                       round(first * 1000, 1), "ms", f"<= {TARGET_S * 1000:g}",
                       first <= TARGET_S),
            common.row("register_speed", case, "re-enable", round(again * 1000, 1), "ms",
                       f"<= {TARGET_S * 1000:g}", again <= TARGET_S)]


if __name__ == "__main__":
    rows = run()
    for r in rows:
        print(r)
    sys.exit(0 if all(r["ok"] is not False for r in rows) else 1)
