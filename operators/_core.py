"""The bpy-free core (``emoca_blender/``) as seen from the Blender-side modules.

Inside the installed extension the core is the sibling package ``<extension>.emoca_blender``;
when ``operators/`` is imported as a top-level package (tests, the command line) the core is
the top-level package ``emoca_blender``. Modules here do ``from ._core import capture_file``.
"""
from __future__ import annotations

import importlib

try:
    from .. import emoca_blender as core  # inside the installed extension
except (ImportError, ValueError):  # operators/ imported as a top-level package (CLI, tests)
    import emoca_blender as core  # type: ignore[no-redef]

capture_file = importlib.import_module(core.__name__ + ".capture_file")
head_model = importlib.import_module(core.__name__ + ".models.head_model")
arkit = importlib.import_module(core.__name__ + ".arkit")
rotations = importlib.import_module(core.__name__ + ".rotations")

__all__ = ["core", "capture_file", "head_model", "arkit", "rotations"]
