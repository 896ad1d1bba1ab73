"""The house's import layers (README "Layout", ``emoca_blender/__init__.py``), read from the
source with ``ast``: every import counts, module-level or inside a function, and so does
``importlib.import_module`` of a name built from ``__package__`` / ``__name__``.

Core: a module imports only from its own layer or lower ones; no circle; no bpy. Blender side:
scene builders (``operators/scene/``) never import an operator module (``ops_*``); no circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module belongs to the longest prefix listed (relative to emoca_blender)
LAYERS = [
    ("top-level leaves", ["", "errors", "input_files", "device_info", "rotations", "arkit",
                          "capture_file"]),
    ("models", ["models"]),
    ("capture stages", ["capture"]),
    ("backends", ["backends"]),
    ("emotion", ["emotion"]),
    ("capture jobs", ["capture.pipeline", "capture.takes"]),
    ("retarget", ["retarget"]),
    ("cli", ["cli", "__main__"]),
]
BLENDER = ("bpy", "bpy_extras", "mathutils", "bmesh", "addon_utils", "io_scene_fbx")


def _modules(pkg: str) -> dict[str, Path]:
    out = {}
    for p in sorted((ROOT / pkg).rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _package(mod: str, path: Path) -> str:
    return mod if path.name == "__init__.py" else mod.rpartition(".")[0]


def _static(node, pkg: str, name: str):
    """The value of a string expression built from __package__ / __name__, or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return {"__package__": pkg, "__name__": name}.get(node.id)
    if isinstance(node, ast.Attribute) and node.attr == "__name__" and (
            getattr(node.value, "id", None) in ("core", "_core_pkg")
            or getattr(node.value, "attr", None) == "core"):
        return "emoca_blender"          # operators._core's view of the core package
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        a, b = _static(node.left, pkg, name), _static(node.right, pkg, name)
        return a + b if a is not None and b is not None else None
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call):
        call = node.value
        if isinstance(call.func, ast.Attribute) and call.func.attr in ("rpartition", "partition"):
            s = _static(call.func.value, pkg, name)
            sep = _static(call.args[0], pkg, name) if call.args else None
            idx = node.slice.value if isinstance(node.slice, ast.Constant) else None
            if s is not None and sep is not None and isinstance(idx, int):
                return getattr(s, call.func.attr)(sep)[idx]
    if isinstance(node, ast.JoinedStr):        # f"{__package__}.backends.{module}": the prefix
        out = ""
        for v in node.values:
            s = _static(v.value, pkg, name) if isinstance(v, ast.FormattedValue) else \
                _static(v, pkg, name)
            if s is None:
                return out.rstrip(".") or None
            out += s
        return out
    return None


def imports(pkg: str) -> dict[str, list[tuple[str, int]]]:
    """Module -> [(imported module or package, line)], for every module under ``pkg``."""
    mods = _modules(pkg)
    known = set(mods)
    out = {}
    for mod, path in mods.items():
        here = _package(mod, path)
        edges = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges += [(a.name, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for a in node.names:
                    full = f"{base}.{a.name}" if base else a.name
                    edges.append((full if full in known else base, node.lineno))
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                    node.func, "id", None)) == "import_module" and node.args:
                s = _static(node.args[0], here, mod)
                if s and not s.startswith("."):
                    edges.append((s, node.lineno))
        # "from .. import emoca_blender as core" and other names reaching past the package
        out[mod] = [(e, n) for e, n in edges if e and e != mod]
    return out


def _layer(mod: str) -> int:
    rel = mod.partition(".")[2] if mod != "emoca_blender" else ""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (rel == p or (p and rel.startswith(p + "."))) and len(p) > best:
                best, rank = len(p), i
    return rank


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _graph(edges: dict, known) -> dict[str, set[str]]:
    g = {}
    for m, es in edges.items():
        for e, _ in es:
            # an import of a package's name reaches the package module itself
            while e and e not in known:
                e = e.rpartition(".")[0]
            if e and e != m:
                g.setdefault(m, set()).add(e)
    return g


CORE = imports("emoca_blender")
OPS = imports("operators")


def test_imports_resolve():
    """Every import of a project module the walker can read names a module that exists (the
    strings given to ``importlib.import_module`` included)."""
    def exists(mod):
        p = ROOT / Path(*mod.split("."))
        return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()
    bad = [f"{m}:{line} imports {e}" for pkg in (CORE, OPS) for m, es in pkg.items()
           for e, line in es if e.split(".")[0] in ("emoca_blender", "operators", "panels")
           and not exists(e)]
    assert not bad, "imports of modules that do not exist:\n" + "\n".join(bad)


def test_every_core_module_has_a_layer():
    missing = [m for m in CORE if _layer(m) is None]
    assert not missing, f"modules in no layer (add them to LAYERS and the docstrings): {missing}"


def test_core_imports_go_down():
    bad = []
    for m, es in CORE.items():
        for e, line in es:
            if not e.startswith("emoca_blender"):
                continue
            lm, le = _layer(m), _layer(e)
            if lm is not None and le is not None and le > lm:
                bad.append(f"{m}:{line} ({LAYERS[lm][0]}) imports {e} ({LAYERS[le][0]})")
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_nothing_imports_the_cli():
    bad = [f"{m}:{line} imports {e}" for pkg in (CORE, OPS) for m, es in pkg.items()
           for e, line in es
           if (e == "emoca_blender.cli" or e.startswith("emoca_blender.cli."))
           and not (m.startswith("emoca_blender.cli") or m == "emoca_blender.__main__")]
    assert not bad, "\n".join(bad)


def test_core_has_no_blender_import():
    """The core never imports bpy or the Blender side; the one door is the CLI's scene jobs
    (``cli.main._blender_side``, run inside Blender), which import ``operators.scene``."""
    bad = [f"{m}:{line} imports {e}" for m, es in CORE.items() for e, line in es
           if e.split(".")[0] in BLENDER or e.startswith("panels") or (
               e.startswith("operators") and not (m.startswith("emoca_blender.cli.")
                                                  and e.startswith("operators")))]
    assert not bad, "the core is bpy-free:\n" + "\n".join(bad)


@pytest.mark.parametrize("edges", [CORE, OPS], ids=["core", "operators"])
def test_no_import_circles(edges):
    cycles = _cycles(_graph(edges, set(edges)))
    assert not cycles, "import circles (module-level and lazy imports):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


def test_scene_builders_import_no_operator_module():
    bad = [f"{m}:{line} imports {e}" for m, es in OPS.items() if m.startswith("operators.scene")
           for e, line in es if e.rpartition(".")[2].startswith("ops_")]
    assert not bad, "scene builders never import operator modules:\n" + "\n".join(bad)


def test_the_checks_see_what_they_check():
    """The walker finds the imports it must judge (a lazy one, a relative one, import_module)."""
    assert any(e == "emoca_blender.capture.landmark_solve" for e, _ in
               CORE["emoca_blender.capture.solve"])
    assert any(e == "emoca_blender.emotion.network" for e, _ in
               CORE["emoca_blender.capture.pipeline"])
    assert any(e.startswith("emoca_blender.backends") for e, _ in
               CORE["emoca_blender.capture.pipeline"])
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert _layer("emoca_blender.capture.pipeline") > _layer("emoca_blender.emotion.refine") > \
        _layer("emoca_blender.capture.solve") > _layer("emoca_blender.models.flame")
