"""Run the benchmarks and print one Markdown table (paste it into the README's Figures).

    python bench/run.py [NAME ...]      # default: every bench listed in BENCHES

Each bench module has ``run() -> list[dict]`` rows made with ``common.row``.
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BENCHES = ["capture_speed", "fidelity", "solve_accuracy", "retarget_speed", "key_reduction", "rig_build", "flame_fit_accuracy", "emotion_refine", "emoca_speed", "register_speed"]


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or BENCHES
    rows = []
    for name in names:
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(name)
            rows += mod.run()
        except Exception as e:  # noqa: BLE001 - a broken bench is reported, others still run
            rows.append(common.row(name, "-", "error", float("nan"), "", str(e)[:80], False))
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(f"Machine: {common.machine()}\n")
    print("| bench | case | metric | value | unit | target | ok |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "**no**")
        print(f"| {r['bench']} | {r['case']} | {r['metric']} | {fmt(r['value'])} | {r['unit']} "
              f"| {r['target']} | {ok} |")
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
