"""glTF 2.0 export (.glb, or .gltf with its buffer embedded) of baked characters: morph
targets named by the shape keys (ARKit names) and bone animation as one animation named
after the take, for three.js, Godot and Unity's glTF importers; checked by re-import.

The scene preparation is FBX's (:mod:`fbx_io`: :func:`fbx_io.objects_to_export`,
:func:`fbx_io.exporting` with its engine-ready rest pose and origin); this module only adds
the glTF exporter's settings and two corrections of bpy 5.0.1's glTF add-on (measured):

* the exporter and the importer convert frames to seconds with ``fps * fps_base`` where the
  frame rate is ``fps / fps_base``: at 29.97 fps (fps 30, base 1.001) every time came out
  0.2% early (0.12 s after a minute). The scene's base is inverted for the exporter call
  (and for the check's import), and the written times are checked against
  ``frame / (fps / fps_base)``.
* ``export_animation_mode='ACTIVE_ACTIONS'`` merges the shape-key and armature actions into
  one animation named ``export_nla_strips_merged_animation_name`` (the other modes write one
  animation per action, ``<take>|<object>``).

The rest pose is the neutral: the exporter runs at the engine-ready rest frame
(``export_current_frame``), so every morph target's default weight is 0 and the bones sit at
rest; the armature is written at its own origin.
"""
from __future__ import annotations

import base64
import contextlib
import json
import struct
from pathlib import Path

import bpy
import numpy as np

from . import fbx_io
from .._core import capture_file


class GltfExportError(fbx_io.ExportError):
    """The glTF file could not be written, or its re-import did not give the animation
    back."""


SUFFIXES = (".glb", ".gltf")

#: the glTF exporter's options (bpy 5.0.1 names); the take's name and the format are added
#: per call
OPTIONS = dict(
    use_selection=True, export_yup=True, export_apply=False,
    export_cameras=False, export_lights=False, export_extras=False,
    export_skins=True, export_def_bones=False, export_leaf_bone=False,
    export_rest_position_armature=True, export_reset_pose_bones=True,
    export_morph=True, export_morph_normal=True, export_morph_animation=True,
    export_morph_reset_sk_data=True,
    export_animations=True, export_animation_mode="ACTIVE_ACTIONS",
    export_frame_range=True, export_frame_step=1, export_force_sampling=True,
    export_anim_slide_to_zero=False, export_bake_animation=False,
    export_optimize_animation_size=False, export_current_frame=True,
    export_materials="EXPORT", export_image_format="AUTO",
    check_existing=False, will_save_settings=False,
)

_GLB_MAGIC, _JSON, _BIN = 0x46546C67, 0x4E4F534A, 0x004E4942


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """(the JSON document, the binary chunk) of a GLB file's bytes."""
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2:
        raise GltfExportError("not a glTF 2.0 binary (GLB) file")
    doc, blob, i = None, b"", 12
    while i + 8 <= min(length, len(data)):
        n, kind = struct.unpack_from("<II", data, i)
        chunk = data[i + 8:i + 8 + n]
        if kind == _JSON:
            doc = json.loads(chunk)
        elif kind == _BIN:
            blob = bytes(chunk)
        i += 8 + n
    if doc is None:
        raise GltfExportError("the GLB file has no JSON chunk")
    return doc, blob


def read_gltf(path) -> tuple[dict, bytes]:
    """(document, buffer 0) of a .glb or of a .gltf whose buffer is a data URI."""
    data = Path(path).read_bytes()
    if data[:4] == b"glTF":
        return read_glb(data)
    doc = json.loads(data)
    uri = (doc.get("buffers") or [{}])[0].get("uri", "")
    blob = base64.b64decode(uri.split(",", 1)[1]) if uri.startswith("data:") else b""
    return doc, blob


def write_glb(doc: dict, blob: bytes) -> bytes:
    """A GLB file's bytes from its JSON document and binary chunk (both padded to 4 bytes,
    JSON with spaces, the binary chunk with zeros, as the glTF 2.0 specification says)."""
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    blob = bytes(blob) + b"\0" * (-len(blob) % 4)
    chunks = struct.pack("<II", len(js), _JSON) + js
    if blob:
        chunks += struct.pack("<II", len(blob), _BIN) + blob
    return struct.pack("<III", _GLB_MAGIC, 2, 12 + len(chunks)) + chunks


def _neutral_rest_weights(glb: bytes) -> bytes:
    """The GLB with every mesh's default morph weights 0 (the neutral face): the exporter's
    ACTIONS mode writes what the shape keys hold after it has sampled the takes."""
    doc, blob = read_glb(glb)
    for m in doc.get("meshes", []):
        if "weights" in m:
            m["weights"] = [0.0] * len(m["weights"])
    return write_glb(doc, blob)


def _embedded_gltf(glb: bytes) -> bytes:
    """The GLB's content as a single .gltf file: buffer 0 as a base64 data URI."""
    doc, blob = read_glb(glb)
    if doc.get("buffers"):
        doc["buffers"][0]["uri"] = ("data:application/octet-stream;base64,"
                                    + base64.b64encode(blob).decode("ascii"))
    return json.dumps(doc, separators=(",", ":")).encode()


def accessor(doc: dict, blob: bytes, index: int) -> np.ndarray:
    """A float accessor's values, (count, components) (count,) for scalars; sparse
    accessors resolved."""
    a = doc["accessors"][index]
    ncomp = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[a["type"]]
    if a.get("componentType") != 5126:
        raise GltfExportError(f"accessor {index} is not float")
    out = np.zeros(a["count"] * ncomp, np.float32)
    if "bufferView" in a:
        bv = doc["bufferViews"][a["bufferView"]]
        stride = bv.get("byteStride", 4 * ncomp)
        off = bv.get("byteOffset", 0) + a.get("byteOffset", 0)
        raw = np.frombuffer(blob, np.uint8, count=stride * (a["count"] - 1) + 4 * ncomp,
                            offset=off)
        out = np.lib.stride_tricks.as_strided(raw, (a["count"], 4 * ncomp), (stride, 1))
        out = out.copy().view(np.float32).reshape(-1).copy()
    sp = a.get("sparse")
    if sp:
        ib, vb = sp["indices"], sp["values"]
        ivw, vvw = doc["bufferViews"][ib["bufferView"]], doc["bufferViews"][vb["bufferView"]]
        itype = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32}[ib["componentType"]]
        idx = np.frombuffer(blob, itype, sp["count"],
                            ivw.get("byteOffset", 0) + ib.get("byteOffset", 0))
        val = np.frombuffer(blob, np.float32, sp["count"] * ncomp,
                            vvw.get("byteOffset", 0) + vb.get("byteOffset", 0))
        out = out.reshape(-1, ncomp)
        out[idx.astype(np.int64)] = val.reshape(-1, ncomp)
    return out.reshape(-1, ncomp) if ncomp > 1 else out.reshape(-1)


def _check_times(doc: dict, blob: bytes, frame_start: int, fps: float) -> None:
    """Every animation starts at ``frame_start / fps`` seconds (see the module docstring)."""
    for anim in doc.get("animations", []):
        for s in anim["samplers"]:
            t0 = float(accessor(doc, blob, s["input"])[0])
            if abs(t0 - frame_start / fps) > 1e-5 + 1e-6 * frame_start:
                raise GltfExportError(
                    f"the glTF exporter wrote frame {frame_start} at {t0:.6f} s, not at "
                    f"{frame_start / fps:.6f} s ({fps:.4f} fps): its time base has changed")


@contextlib.contextmanager
def _true_time_base(scene):
    """For the duration: ``fps * fps_base`` is the scene's frame rate (bpy 5.0.1's glTF
    add-on multiplies where it should divide)."""
    base = scene.render.fps_base
    if abs(base - 1.0) < 1e-9:
        yield
        return
    try:
        scene.render.fps_base = 1.0 / base
        yield
    finally:
        scene.render.fps_base = base


def export_gltf(path, objects, *, frame_start: int, frame_end: int, verify: bool = True,
                take_name: str | None = None, face_only: bool = False, takes=None) -> Path:
    """Export ``objects`` (plus their armatures) with their animation to a .glb, or a .gltf
    with its buffer embedded, written under a temporary name and renamed when complete.

    One animation named after the take (``take_name``, default the clip's from the baked
    actions) carries the morph-target weights and the bones over ``frame_start..frame_end``
    (times ``frame / fps`` seconds); the rest pose is the neutral (morph target weights 0,
    bones at rest) and the character sits at its own origin, as with FBX's engine presets.
    glTF is metres, +Y up, +Z forward: one convention for every engine, so no presets.

    Args:
        verify: re-import the file (:func:`read_gltf_animation`) and raise
            :class:`GltfExportError` when an animated object comes back without animation.
        face_only: export only the meshes with shape keys (and their armature).
        takes: the character's takes (``operators.scene.takes``) to write instead of the assigned
            actions: a list of take names, or ``"all"``: one animation per take, named
            after it, from 0 s (:func:`_export_takes`; ``frame_start``/``frame_end`` are not
            used then).
    Returns:
        the path written.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise GltfExportError(f"{path.name}: a glTF file ends in .glb or .gltf")
    if not path.parent.is_dir():
        raise GltfExportError(f"output folder {path.parent} does not exist")
    objs = fbx_io.objects_to_export(objects, face_only, GltfExportError)
    if takes is not None:
        return _export_takes(path, objs, None if takes == "all" else list(takes), verify)
    take = take_name or fbx_io.take_name_of(objs)
    scene = bpy.context.scene
    with fbx_io.exporting(objs, frame_start, frame_end, take_name=take), \
            capture_file.written_beside(path, suffix=".part.glb") as tmp:
        fps = scene.render.fps / scene.render.fps_base    # the clip's (fbx_io.clip_rate)
        with _true_time_base(scene):
            res = bpy.ops.export_scene.gltf(filepath=tmp, export_format="GLB",
                                            export_nla_strips_merged_animation_name=take,
                                            **OPTIONS)
        if "FINISHED" not in res:
            raise GltfExportError(f"the glTF exporter returned {res}")
        glb = Path(tmp).read_bytes()
        _check_times(*read_glb(glb), int(frame_start), fps)
        if path.suffix.lower() == ".gltf":
            Path(tmp).write_bytes(_embedded_gltf(glb))
    if verify:
        fbx_io.check_reimport(objs, read_gltf_animation(path), path, GltfExportError)
    return path


#: the exporter's options for takes: one animation per action (a take's action holds its
#: shape-key and armature slots, merged into one animation named after it), over the
#: action's frames slid to 0 s; muted strips (the other takes, the rest tracks) left out
TAKE_OPTIONS = dict(OPTIONS, export_animation_mode="ACTIONS", export_merge_animation="ACTION",
                    export_anim_single_armature=False, export_anim_slide_to_zero=True)


def _export_takes(path: Path, objs, names, verify: bool) -> Path:
    """The takes ``names`` (all when None) of the character ``objs`` as one glTF animation
    each, named after the take, each from 0 s to its length at the takes' rate: the
    exporter's ACTIONS mode with the other takes' strips and the rest tracks muted (see
    ``operators/scene/takes.py``), the scene's range over all of them; the morph targets' default
    weights are set to 0 (the neutral) in the file. Checked: every take's first time is 0
    and its last its length; re-imported (:func:`read_gltf_takes`), every take is an
    animation with the shape keys and bones it animates."""
    from . import takes as takes_mod

    scene = bpy.context.scene
    try:
        tk, rate, first, last = takes_mod.export_span(objs, names, scene)
    except takes_mod.TakeError as e:
        raise GltfExportError(str(e)) from None
    with fbx_io.exporting(objs, first, last, take_name=tk[0].name, rate=rate), \
            takes_mod.only_takes(objs, [t.name for t in tk], mute_rest=True), \
            capture_file.written_beside(path, suffix=".part.glb") as tmp:
        with _true_time_base(scene):
            res = bpy.ops.export_scene.gltf(filepath=tmp, export_format="GLB",
                                            export_nla_strips_merged_animation_name=tk[0].name,
                                            **TAKE_OPTIONS)
        if "FINISHED" not in res:
            raise GltfExportError(f"the glTF exporter returned {res}")
        glb = _neutral_rest_weights(Path(tmp).read_bytes())
        doc, blob = read_glb(glb)
        anims = {a.get("name"): a for a in doc.get("animations", [])}
        for t in tk:
            a = anims.get(t.name)
            if a is None:
                raise GltfExportError(f"the glTF exporter wrote no animation for take {t.name} "
                                      f"(wrote {', '.join(map(str, anims)) or 'none'})")
            times = [accessor(doc, blob, smp["input"]) for smp in a["samplers"]]
            t0 = min(float(x[0]) for x in times)
            t1 = max(float(x[-1]) for x in times)
            want = (t.frame_end - t.frame_start) / rate
            if abs(t0) > 1e-5 or abs(t1 - want) > 1.5 / rate:
                raise GltfExportError(f"take {t.name}: the glTF exporter wrote {t0:.4f}-"
                                      f"{t1:.4f} s, not 0-{want:.4f} s ({rate:.4f} fps)")
        if path.suffix.lower() == ".gltf":
            glb = _embedded_gltf(glb)
        Path(tmp).write_bytes(glb)
    if verify:
        fbx_io.check_takes_reimport(objs, tk, read_gltf_takes(path), path, GltfExportError)
    return path


def read_gltf_takes(path) -> dict:
    """Import a .glb/.gltf with several animations into a temporary scene and read each
    back: {animation name: {object name: {"shape_keys", "bones"}}} (Blender's glTF importer
    makes one action per animation, named after it, with a slot per animated object)."""
    scene = bpy.context.scene
    base = scene.render.fps_base if scene is not None else 1.0
    before = set(bpy.data.actions)

    def gltf_import():
        return bpy.ops.import_scene.gltf(filepath=str(path), disable_bone_shape=True,
                                         import_select_created_objects=False)
    with fbx_io.imported(path, gltf_import, GltfExportError,
                         fps_base=None if abs(base - 1.0) < 1e-9 else 1.0 / base) as (
            new_objects, _scene, old_names):
        new = [a for a in bpy.data.actions if a not in before]
        return fbx_io.actions_by_take(new, new_objects, old_names,
                                      old_actions={a.name for a in before})


def read_gltf_animation(path) -> dict:
    """Import a .glb/.gltf into a temporary scene and read its animation back, in
    :func:`fbx_io.read_fbx_animation`'s form (frames of the current scene's rate); the
    user's scene is left as it was."""
    scene = bpy.context.scene
    base = scene.render.fps_base if scene is not None else 1.0

    def gltf_import():
        return bpy.ops.import_scene.gltf(filepath=str(path), disable_bone_shape=True,
                                         import_select_created_objects=False)
    with fbx_io.imported(path, gltf_import, GltfExportError,
                         fps_base=None if abs(base - 1.0) < 1e-9 else 1.0 / base) as (
            new_objects, _scene, old_names):
        return fbx_io.animation_of(new_objects, old_names)


__all__ = ["export_gltf", "read_gltf_animation", "read_gltf_takes", "read_gltf", "read_glb",
           "write_glb", "accessor", "TAKE_OPTIONS",
           "GltfExportError", "OPTIONS", "SUFFIXES"]
