"""Blender side of the displacement maps: the FLAME rig's material plays the capture's
per-frame UV displacement sequence (``NAME.displacement/``, written by the emoca backend,
see ``emoca_blender/models/displacement.py``).

Node tree (FLAME UV space, the mesh's ``UVMap`` from ``head_template.obj``)::

    UV Map -> Image Texture (image sequence, Non-Color, 16-bit)
                 |-> Displacement (midlevel 0.5, scale 2*RANGE_M, object space)
                 |        -> Material Output [Cycles] . Displacement   (true displacement,
                 |           material.displacement_method = 'BOTH': bump below the mesh's
                 |           resolution, geometry where it is subdivided)
                 |-> Bump (distance 2*RANGE_M) -> Principled BSDF . Normal
                          -> Material Output [EEVEE] . Surface          (the normal map)

Frame mapping: Blender shows file number ``clamp(F - frame_start + 1, 0, frame_duration) +
frame_offset`` at scene frame F, so ``frame_start`` = the rig's first frame, ``frame_duration``
= the capture's frame count and ``frame_offset`` = (number of the first file) - 1: scene frame
``frame_start + i`` shows the map of captured frame i (video frame ``first + i``).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import bpy


def _core_module(name: str):
    """A core module, imported when first needed (registering imports nothing heavy)."""
    from .._core import core

    return importlib.import_module(core.__name__ + "." + name)

MATERIAL_SUFFIX = "_displacement"
SKIN = (0.8, 0.62, 0.52, 1.0)


def sequence_for_capture(capture_path) -> Path:
    """The displacement folder beside a capture; BadInput-style error when absent."""
    displacement = _core_module("models.displacement")
    folder = displacement.sequence_dir(capture_path)
    if not (folder / displacement.MANIFEST).is_file():
        errors = _core_module("errors")
        raise errors.BadInput(f"{Path(capture_path).name} has no displacement sequence "
                              f"({folder.name}/): capture with --backend emoca and a "
                              "checkpoint holding the detail networks")
    return folder


def frame_for_scene(image_user, scene_frame: int) -> int:
    """The file number Blender shows at ``scene_frame`` (its image-user rule)."""
    n = scene_frame - image_user.frame_start + 1
    if image_user.use_cyclic and image_user.frame_duration > 0:
        n = ((n - 1) % image_user.frame_duration) + 1
    n = min(max(n, 0), image_user.frame_duration)
    return n + image_user.frame_offset


def _node(nt, kind, loc, **props):
    n = nt.nodes.new(kind)
    n.location = loc
    for k, v in props.items():
        setattr(n, k, v)
    return n


def add_displacement_material(obj, folder, frame_start: int = 1, uv_map: str = "UVMap",
                              name: str | None = None):
    """Give ``obj`` (the FLAME rig's mesh) a material animated by the sequence in ``folder``.

    Returns the material. Replaces the object's materials.
    """
    folder = Path(folder)
    m = json.loads((folder / _core_module("models.displacement").MANIFEST).read_text())
    first_file = folder / m["pattern"].format(m["first"])
    if not first_file.is_file():
        raise FileNotFoundError(f"{first_file} is missing: the displacement sequence is incomplete")
    if uv_map not in obj.data.uv_layers:
        raise ValueError(f"{obj.name} has no UV map {uv_map!r}: build the FLAME rig with "
                         "head_template.obj beside the FLAME model (its UVs)")
    scale = float(m["encoding"]["scale_m"])
    img = bpy.data.images.load(str(first_file), check_existing=False)
    img.name = f"{obj.name}{MATERIAL_SUFFIX}"
    img.source = "SEQUENCE"
    img.colorspace_settings.name = "Non-Color"
    img.alpha_mode = "NONE"

    mat = bpy.data.materials.new(name or f"{obj.name}{MATERIAL_SUFFIX}")
    if not getattr(mat, "node_tree", None):
        mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    L = nt.links.new
    uv = _node(nt, "ShaderNodeUVMap", (-900, 0), uv_map=uv_map)
    tex = _node(nt, "ShaderNodeTexImage", (-650, 0), image=img, interpolation="Linear",
                extension="EXTEND", label="displacement sequence")
    iu = tex.image_user
    iu.frame_duration = int(m["frames"])
    iu.frame_start = int(frame_start)
    iu.frame_offset = int(m["first"]) - 1
    iu.use_cyclic = False
    iu.use_auto_refresh = True
    L(uv.outputs["UV"], tex.inputs["Vector"])

    disp = _node(nt, "ShaderNodeDisplacement", (-300, -300), space="OBJECT")
    disp.inputs["Midlevel"].default_value = float(m["encoding"]["midlevel"])
    disp.inputs["Scale"].default_value = scale
    L(tex.outputs["Color"], disp.inputs["Height"])

    bump = _node(nt, "ShaderNodeBump", (-300, 250))
    bump.inputs["Distance"].default_value = scale
    bump.inputs["Strength"].default_value = 1.0
    L(tex.outputs["Color"], bump.inputs["Height"])

    def bsdf(loc):
        b = _node(nt, "ShaderNodeBsdfPrincipled", loc)
        b.inputs["Base Color"].default_value = SKIN
        b.inputs["Roughness"].default_value = 0.55
        return b

    b_cycles, b_eevee = bsdf((0, -150)), bsdf((0, 350))
    L(bump.outputs["Normal"], b_eevee.inputs["Normal"])
    out_c = _node(nt, "ShaderNodeOutputMaterial", (350, -150), target="CYCLES",
                  label="Cycles: displacement")
    out_e = _node(nt, "ShaderNodeOutputMaterial", (350, 350), target="EEVEE",
                  label="EEVEE: bump normal")
    L(b_cycles.outputs["BSDF"], out_c.inputs["Surface"])
    L(disp.outputs["Displacement"], out_c.inputs["Displacement"])
    L(b_eevee.outputs["BSDF"], out_e.inputs["Surface"])
    out_c.is_active_output = True
    mat.displacement_method = "BOTH"
    obj.data.materials.clear()
    obj.data.materials.append(mat)
    mat["emoca_displacement"] = str(folder)
    return mat


def apply_to_rig(mesh_obj, capture_path, frame_start: int = 1):
    """The rig of a capture (built with ``rig_build.build_flame_rig``) gets its capture's
    displacement sequence. Returns the material."""
    return add_displacement_material(mesh_obj, sequence_for_capture(capture_path),
                                     frame_start=frame_start)


def displacement_node(obj):
    """(material, image node) of ``obj``'s displacement material, or (None, None)."""
    for mat in getattr(obj.data, "materials", ()) or ():
        if mat is not None and "emoca_displacement" in mat and mat.node_tree is not None:
            tex = next((n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage"
                        and n.image is not None), None)
            if tex is not None:
                return mat, tex
    return None, None


def mesh_arrays(mesh, uv_map: str = "UVMap"):
    """(vertices (V,3), triangles (F,3), triangle corner UVs (F,3,2)) of a Blender mesh
    (its loop triangles: the FLAME rig's faces are triangles already)."""
    import numpy as np

    mesh.calc_loop_triangles()
    V = len(mesh.vertices)
    co = np.empty(V * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    T = len(mesh.loop_triangles)
    tv = np.empty(T * 3, np.int32)
    tl = np.empty(T * 3, np.int32)
    mesh.loop_triangles.foreach_get("vertices", tv)
    mesh.loop_triangles.foreach_get("loops", tl)
    layer = mesh.uv_layers.get(uv_map) or mesh.uv_layers.active
    if layer is None:
        errors = _core_module("errors")
        raise errors.BadInput(f"{mesh.name} has no UV map: the detail mesh is built in "
                              "FLAME's UV space (build the rig with head_template.obj)")
    uv = np.empty(len(mesh.loops) * 2, np.float32)
    layer.data.foreach_get("uv", uv)
    uv = uv.reshape(-1, 2)
    return (co.reshape(-1, 3).astype(np.float64), tv.reshape(-1, 3).astype(np.int64),
            uv[tl.reshape(-1, 3)].astype(np.float64))


def new_mesh_object(name: str, dense, collection, matrix_world=None, material=None):
    """A Blender object from a core ``detail_mesh.DenseMesh`` (positions, faces, texel UVs,
    smooth shading), linked to ``collection``."""
    from .rig_build import fill_triangle_mesh

    me = fill_triangle_mesh(bpy.data.meshes.new(name), dense.vertices, dense.faces,
                            dense.uvs[dense.faces.ravel()])
    me.validate(verbose=False)
    obj = bpy.data.objects.new(name, me)
    collection.objects.link(obj)
    if matrix_world is not None:
        obj.matrix_world = matrix_world
    if material is not None:
        me.materials.append(material)
    return obj


def _detail_material():
    mat = bpy.data.materials.get("EMOCA_detail")
    if mat is None:
        mat = bpy.data.materials.new("EMOCA_detail")
        mat.use_nodes = True
        b = next((n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled"),
                 None)
        if b is not None:
            b.inputs["Base Color"].default_value = SKIN
            b.inputs["Roughness"].default_value = 0.55
    return mat


def build_detail_mesh(context, obj, scene_frame: int | None = None, scale: float = 1.0):
    """The dense detail mesh of ``obj`` (a FLAME rig with a displacement material) at
    ``scene_frame`` (default: the current frame): the evaluated rig surface upsampled in UV
    space and displaced by the map shown at that frame. Returns the new object."""
    from pathlib import Path as _P

    displacement = _core_module("models.displacement")
    detail_mesh = _core_module("models.detail_mesh")
    errors = _core_module("errors")
    mat, tex = displacement_node(obj)
    if tex is None:
        raise errors.BadInput(f"{obj.name} has no displacement maps: build the FLAME rig of an "
                              "emoca-backend capture (or use Displacement Maps) first")
    scene = context.scene
    F = scene.frame_current if scene_frame is None else int(scene_frame)
    if F != scene.frame_current:
        scene.frame_set(F)
    folder = _P(mat["emoca_displacement"])
    m = displacement.read_manifest(folder)
    n = frame_for_scene(tex.image_user, F)
    n = min(max(n, int(m["first"])), int(m["first"]) + int(m["frames"]) - 1)
    path = folder / m["pattern"].format(n)
    if not path.is_file():
        raise errors.BadInput(f"displacement map {path} is missing: capture again")
    disp = displacement.read_map(path)
    dg = context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    me = ev.to_mesh()
    try:
        v, tris, fuv = mesh_arrays(me)
    finally:
        ev.to_mesh_clear()
    dense = detail_mesh.build(v, tris, fuv, disp, scale=scale)
    out = new_mesh_object(f"{obj.name}_detail_{n:06d}", dense, scene.collection,
                          matrix_world=obj.matrix_world.copy(), material=_detail_material())
    out["emoca_detail_frame"] = int(n)
    out["emoca_detail_source"] = obj.name
    return out
