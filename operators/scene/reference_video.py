"""The actor's video in the scene: a reference plane that plays the movie frame-locked to the
timeline, the video's audio as a sound strip, and a camera that frames it all.

Blender side (needs bpy), no operators: ``ops_reference`` (the buttons), ``ops_rig`` (Build
Rig adds the reference) and ``cli_scene`` (the ``run`` and ``rig`` scenes) call it.

The plane (object ``EMOCA_reference``) is a quad in the XZ plane facing the Front view (-Y),
sized so the actor's face box in the video is :data:`FACE_HEIGHT` tall, whose material shows
the movie (an Image datablock with source ``'MOVIE'``, emission, mixed with transparency by
the opacity; Workbench's Texture colour shows it too). Its image user maps a scene frame to
a movie frame:

* scene frame ``frame_start`` (where the capture's first frame is keyed) shows the video
  frame the capture started at (``capture.meta['frame_start']``, 0-based);
* a scene frame ``f`` shows the video frame nearest in time to it:
  ``video_start + clamp(round((f - frame_start) * clip_fps / scene_fps), 0, n - 1)``, so a
  scene at another frame rate than the clip stays in sync; before and after the capture the
  plane holds its first and last frame.

The mapping is a driver on the image user's ``frame_offset`` (a simple expression of
``frame`` and the scene's ``render.fps`` / ``fps_base``: Blender evaluates it without Python,
so it works in a .blend opened without the add-on and without auto-run scripts), on top of
the static ``frame_start`` / ``frame_offset`` / ``frame_duration`` that give the same frames
when the rates match.

The sound strip (``EMOCA_reference_audio``) starts at ``frame_start`` with the audio from
the capture's first frame (a negative ``sound_offset``: seconds skipped into the audio), is
the capture's length in scene frames, and ``use_audio_scrub`` plays it while scrubbing;
playback syncs to the audio. A video without an audio track gets no strip and a message
(never an error).

Paths: the movie and the sound are stored ABSOLUTE. The .blend is an output that gets moved
and copied into projects while the footage stays where it was captured (the capture's
sidecar records the same absolute path), so an absolute path survives moving the .blend; a
relative one would survive only moving both together (File > External Data > Make Paths
Relative does that when it is what you want).

The plane's settings live in a custom property (``obj['emoca_reference']``), so later
toggles (show, opacity, placement, sound) and :func:`find` work on any scene, also one
written by the command line without the add-on.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import bpy

KEY = "emoca_reference"             # the plane object's custom property (a dict)
PLANE_NAME = "EMOCA_reference"
SOUND_NAME = "EMOCA_reference_audio"
CAMERA_NAME = "EMOCA_camera"
NODE = "Reference Movie"            # the image texture node of the plane's material
MIX = "Reference Opacity"           # the mix shader whose factor is the opacity
FACE_HEIGHT = 0.2                   # metres: the video's face box is drawn this tall
GAP = 0.03                          # metres between the actor and the plane (side by side)
BEHIND = 0.05                       # metres behind the actor's back (behind)
PLACEMENTS = ("SIDE", "BEHIND")
PLANE_HEIGHT_RANGE = (0.25, 4.0)    # metres, whatever the face box says


@dataclass
class Reference:
    """What the plane and the strip need from a capture."""

    video: str              # absolute path of the movie
    fps: float              # the clip's frame rate
    video_start: int        # the video frame (0-based) of the capture's first frame
    n_frames: int           # frames in the capture
    frame_start: int        # the scene frame where the capture's first frame is keyed
    audio_start: float      # seconds into the video's audio at the capture's first frame
    width: int = 0
    height: int = 0
    face_box: tuple | None = None   # (x0, y0, x1, y1) pixels, the median face box


def from_capture(capture, frame_start: int = 1, video: str | None = None) -> Reference:
    """The reference of a capture: its source video (or ``video``, e.g. the same clip moved
    elsewhere), frame rate, start offset and length, and the median face box."""
    import numpy as np

    meta = capture.meta
    src = meta.get("source") or {}
    path = os.path.abspath(str(video or src.get("path") or ""))
    start = int(meta.get("frame_start") or 0)
    fps = float(meta.get("fps") or 0) or 30.0
    t = capture.get("timestamps")
    audio_start = float(t[0]) if t is not None and len(t) else start / fps
    box = None
    if "bbox" in capture:
        b = np.asarray(capture["bbox"], np.float64)
        valid = np.asarray(capture["valid"], bool) if "valid" in capture else None
        if valid is not None and valid.any():
            b = b[valid]
        if len(b) and np.all(np.isfinite(b)):
            box = tuple(float(v) for v in np.median(b, axis=0))
    return Reference(video=path, fps=fps, video_start=start, n_frames=int(capture.n_frames),
                     frame_start=int(frame_start), audio_start=max(0.0, audio_start),
                     width=int(meta.get("width") or 0), height=int(meta.get("height") or 0),
                     face_box=box)


def scene_fps(scene) -> float:
    return scene.render.fps / scene.render.fps_base


def movie_frame(ref: Reference | dict, scene_frame: float, fps_scene: float) -> int:
    """The video frame (0-based) the plane shows at ``scene_frame`` (see the module doc)."""
    g = ref if isinstance(ref, dict) else ref.__dict__
    d = scene_frame - g["frame_start"]
    k = math.floor(d * g["fps"] / fps_scene + 0.5)
    return int(g["video_start"] + min(max(k, 0), g["n_frames"] - 1))


def scene_length(ref: Reference, fps_scene: float) -> int:
    """Scene frames the capture spans at the scene's frame rate."""
    return max(1, int(round(ref.n_frames * fps_scene / ref.fps)))


# --------------------------------------------------------------------------------------
# Finding, removing


def find(scene):
    """The scene's reference plane, or None."""
    for o in scene.objects:
        if KEY in o.keys():
            return o
    return None


def settings(plane) -> dict:
    """The plane's stored settings as a plain dict."""
    v = plane.get(KEY)
    return v.to_dict() if hasattr(v, "to_dict") else dict(v or {})


def _top(se):
    """The sequencer's top-level strips (``strips`` in Blender 5, ``sequences`` before)."""
    return se.strips if hasattr(se, "strips") else se.sequences


def _all(se):
    return se.strips_all if hasattr(se, "strips_all") else se.sequences_all


def sound_strip(scene):
    """The reference's sound strip, or None."""
    se = scene.sequence_editor
    if se is None:
        return None
    plane = find(scene)
    name = settings(plane).get("sound") if plane is not None else None
    return _all(se).get(name or SOUND_NAME)


def remove(scene) -> None:
    """Remove the scene's reference plane (and its mesh, material, movie) and sound strip."""
    strip = sound_strip(scene)
    if strip is not None:
        sound = strip.sound
        _top(scene.sequence_editor).remove(strip)
        if sound is not None and sound.users == 0:
            bpy.data.sounds.remove(sound)
    plane = find(scene)
    while plane is not None:
        mesh = plane.data
        mats = [m for m in mesh.materials if m is not None]
        bpy.data.objects.remove(plane)
        if mesh.users == 0:
            bpy.data.meshes.remove(mesh)
        for mat in mats:
            imgs = [n.image for n in mat.node_tree.nodes if n.type == 'TEX_IMAGE' and n.image] \
                if mat.node_tree else []
            if mat.users == 0:
                bpy.data.materials.remove(mat)
            for img in imgs:
                if img.users == 0:
                    bpy.data.images.remove(img)
        plane = find(scene)


# --------------------------------------------------------------------------------------
# The plane


def _plane_size(ref: Reference) -> tuple[float, float, float, float]:
    """(width, height, u, v) of the plane in metres; (u, v) is the face box's centre in UV
    space (the plane's origin: the object's location is where the face goes)."""
    w_px = ref.width or 16
    h_px = ref.height or 9
    height = 0.5
    u, v = 0.5, 0.5
    if ref.face_box is not None and ref.height:
        x0, y0, x1, y1 = ref.face_box
        face_px = y1 - y0
        if face_px > 1:
            height = FACE_HEIGHT * h_px / face_px
        u = min(max(0.5 * (x0 + x1) / w_px, 0.0), 1.0)
        v = min(max(1.0 - 0.5 * (y0 + y1) / h_px, 0.0), 1.0)
    height = min(max(height, PLANE_HEIGHT_RANGE[0]), PLANE_HEIGHT_RANGE[1])
    return height * w_px / h_px, height, u, v


def _plane_mesh(name: str, ref: Reference):
    w, h, u, v = _plane_size(ref)
    x0, x1 = -u * w, (1.0 - u) * w
    z0, z1 = -v * h, (1.0 - v) * h
    me = bpy.data.meshes.new(name)
    me.from_pydata([(x0, 0.0, z0), (x1, 0.0, z0), (x1, 0.0, z1), (x0, 0.0, z1)], [],
                   [(0, 1, 2, 3)])
    uv = me.uv_layers.new(name="UVMap")
    for i, co in enumerate(((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))):
        uv.data[i].uv = co
    me.update()
    # the quad's normal faces -Y (the Front view, where the camera is)
    if me.polygons[0].normal.y > 0:
        me.flip_normals()
    return me


def _driver_expression(ref: Reference, duration: int) -> str:
    """frame_offset such that Blender's movie frame (1-based: clamp(frame - frame_start + 1,
    0, duration) + frame_offset) is video frame movie_frame(frame) (0-based) + 1."""
    f0 = ref.frame_start
    return (f"{ref.video_start} + 1 + min(max(floor((frame - {f0}) * {ref.fps!r} * base / fps"
            f" + 0.5), 0), {ref.n_frames - 1}) - min(max(frame - {f0} + 1, 0), {duration})")


def _material(name: str, image, ref: Reference, scene):
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:          # Blender before 5.0
        mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    tex = nt.nodes.new("ShaderNodeTexImage")
    tex.name = tex.label = NODE
    tex.image = image
    tex.interpolation = 'Linear'
    tex.extension = 'CLIP'
    iu = tex.image_user
    duration = max(ref.n_frames, scene_length(ref, scene_fps(scene)))
    iu.frame_start = ref.frame_start
    iu.frame_duration = duration
    iu.frame_offset = ref.video_start
    iu.use_cyclic = False
    iu.use_auto_refresh = True
    emit = nt.nodes.new("ShaderNodeEmission")
    clear = nt.nodes.new("ShaderNodeBsdfTransparent")
    mix = nt.nodes.new("ShaderNodeMixShader")
    mix.name = mix.label = MIX
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    nt.links.new(tex.outputs["Color"], emit.inputs["Color"])
    nt.links.new(clear.outputs[0], mix.inputs[1])
    nt.links.new(emit.outputs[0], mix.inputs[2])
    nt.links.new(mix.outputs[0], out.inputs["Surface"])
    for i, n in enumerate((tex, emit, clear, mix, out)):
        n.location = (-600 + 250 * i, 0 if n is not clear else 200)
    nt.nodes.active = tex             # Workbench's Texture colour shows the active image node
    mat.use_backface_culling = False
    if hasattr(mat, "surface_render_method"):
        mat.surface_render_method = 'BLENDED'
    fc = nt.driver_add(f'nodes["{NODE}"].image_user.frame_offset')
    drv = fc.driver
    drv.type = 'SCRIPTED'
    for var_name, path in (("fps", "render.fps"), ("base", "render.fps_base")):
        var = drv.variables.new()
        var.name = var_name
        var.type = 'SINGLE_PROP'
        var.targets[0].id_type = 'SCENE'
        var.targets[0].id = scene
        var.targets[0].data_path = path
    drv.expression = _driver_expression(ref, duration)
    return mat


def _load_movie(path: str):
    img = bpy.data.images.load(path, check_existing=False)
    if img.source != 'MOVIE':
        img.source = 'MOVIE'
    img.filepath = path                 # absolute (see the module doc)
    img.name = f"{os.path.basename(path)} (reference)"
    return img


def _bounds(objects):
    """World-space (min, max) corners of the meshes among ``objects`` and their children
    (the armature's bones otherwise), or None."""
    from mathutils import Vector

    pts = []
    seen = set()

    def add(o):
        if o is None or o.name in seen:
            return
        seen.add(o.name)
        if o.type in ('MESH', 'ARMATURE', 'CURVE', 'SURFACE', 'FONT', 'META', 'LATTICE'):
            if o.type != 'ARMATURE' or not any(c.type == 'MESH' for c in o.children):
                pts.extend(o.matrix_world @ Vector(c) for c in o.bound_box)
        for c in o.children:
            add(c)

    for o in objects:
        add(o)
    if not pts:
        return None
    lo = Vector((min(p.x for p in pts), min(p.y for p in pts), min(p.z for p in pts)))
    hi = Vector((max(p.x for p in pts), max(p.y for p in pts), max(p.z for p in pts)))
    return lo, hi


def _update(scene) -> None:
    for vl in scene.view_layers:
        vl.update()


def _face_centre(actor_objects, lo, hi):
    """Where the actor's face is: below the eyes when the rig has eye bones, else the middle
    of its bounds."""
    from mathutils import Vector

    for o in actor_objects:
        if o is not None and o.type == 'ARMATURE':
            eyes = [o.matrix_world @ b.head_local for b in o.data.bones
                    if b.name in ("left_eye", "right_eye")]
            if len(eyes) == 2:
                c = (eyes[0] + eyes[1]) / 2
                return Vector((c.x, c.y, c.z - 0.03))
    return (lo + hi) / 2


def place(scene, plane, actor_objects=None, placement: str | None = None) -> None:
    """Put the plane beside the actor (left of it, its face at the actor's face height) or
    behind it (the video's face behind the actor's face). ``actor_objects`` default to the
    objects named in the plane's settings."""
    from mathutils import Vector

    st = settings(plane)
    placement = placement or st.get("placement") or "SIDE"
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r}: one of {', '.join(PLACEMENTS)}")
    if actor_objects is None:
        actor_objects = [bpy.data.objects.get(n) for n in st.get("actor", ())]
    actor_objects = [o for o in actor_objects if o is not None and o != plane]
    _update(scene)
    b = _bounds(actor_objects)
    if b is None:
        plane.location = (0.0, 0.0, 0.0)
    else:
        lo, hi = b
        face = _face_centre(actor_objects, lo, hi)
        xs = [v.co.x for v in plane.data.vertices]
        if placement == "SIDE":
            plane.location = Vector((lo.x - GAP - max(xs), face.y, face.z))
        else:
            plane.location = Vector((face.x, hi.y + BEHIND, face.z))
    plane.rotation_euler = (0.0, 0.0, 0.0)
    plane[KEY]["placement"] = placement


def set_opacity(plane, opacity: float) -> None:
    """Opacity on every path that draws the plane: the material's mix (EEVEE, Cycles), its
    viewport colour's alpha (Workbench: Material and Texture colour) and the object colour."""
    a = min(max(float(opacity), 0.0), 1.0)
    for mat in plane.data.materials:
        if mat is None:
            continue
        mix = mat.node_tree.nodes.get(MIX) if mat.node_tree else None
        if mix is not None:
            mix.inputs[0].default_value = a
        c = list(mat.diffuse_color)
        mat.diffuse_color = (c[0], c[1], c[2], a)
    c = list(plane.color)
    plane.color = (c[0], c[1], c[2], a)
    plane.show_transparent = a < 1.0
    plane[KEY]["opacity"] = a


def show(scene, visible: bool) -> None:
    """Show or hide the plane (viewport and render)."""
    plane = find(scene)
    if plane is not None:
        plane.hide_viewport = not visible
        plane.hide_render = not visible
        plane[KEY]["show"] = bool(visible)


def set_sound(scene, on: bool) -> None:
    """Mute or unmute the reference's sound strip."""
    strip = sound_strip(scene)
    if strip is not None:
        strip.mute = not on
    plane = find(scene)
    if plane is not None:
        plane[KEY]["sound_on"] = bool(on)


def apply_settings(scene, show_plane: bool = True, opacity: float = 1.0,
                   placement: str = "SIDE", sound: bool = True) -> bool:
    """The Rig panel's toggles applied to the scene's reference; False when there is none."""
    plane = find(scene)
    if plane is None:
        return False
    show(scene, show_plane)
    set_opacity(plane, opacity)
    if settings(plane).get("placement") != placement:
        place(scene, plane, placement=placement)
    set_sound(scene, sound)
    return True


# --------------------------------------------------------------------------------------
# The sound


def _free_channel(se) -> int:
    used = [s.channel for s in _all(se)]
    return max(used) + 1 if used else 1


def add_sound(scene, ref: Reference) -> tuple[object | None, str]:
    """The video's audio as a sound strip from ``ref.frame_start``, the capture's length,
    starting at the capture's first frame; ``(strip, message)``, ``(None, why)`` when the
    video has no audio track."""
    se = scene.sequence_editor or scene.sequence_editor_create()
    old = _all(se).get(SOUND_NAME)
    if old is not None:
        _top(se).remove(old)
    name = os.path.basename(ref.video)
    try:
        strip = _top(se).new_sound(SOUND_NAME, ref.video, _free_channel(se),
                                    int(ref.frame_start))
    except (RuntimeError, TypeError) as e:
        return None, f"{name}: no sound strip ({e})"
    sound = strip.sound
    if sound is None or sound.samplerate <= 0:
        _top(se).remove(strip)
        if sound is not None and sound.users == 0:
            bpy.data.sounds.remove(sound)
        return None, f"{name} has no audio track: the reference plays without sound"
    sound.filepath = ref.video         # absolute (see the module doc)
    sound.name = f"{name} (reference)"
    fps = scene_fps(scene)
    length = scene_length(ref, fps)
    # the strip starts at frame_start with the audio from the capture's first frame: a
    # negative sound offset skips into the audio by time (trims are whole frames, and time
    # stays right when the scene's frame rate changes)
    strip.sound_offset = -ref.audio_start
    strip.frame_final_duration = length
    if hasattr(strip, "show_waveform"):
        strip.show_waveform = True
    scene.use_audio_scrub = True
    scene.sync_mode = 'AUDIO_SYNC'    # playback keeps the picture in step with the sound
    got = strip.frame_final_duration
    msg = f"sound strip {got} frames from frame {ref.frame_start}"
    if got < length:
        msg += f" (the audio ends {length - got} frames before the capture)"
    return strip, msg


# --------------------------------------------------------------------------------------
# The whole reference


def add(scene, ref: Reference, actor_objects=(), placement: str = "SIDE",
        opacity: float = 1.0, visible: bool = True, sound: bool = True,
        collection=None) -> dict:
    """The reference plane (and the sound strip) of ``ref`` in ``scene``, replacing the one
    there. Returns ``{"plane", "image", "sound", "messages"}``; raises FileNotFoundError when
    the video is missing (callers report it)."""
    if not ref.video or not os.path.isfile(ref.video):
        raise FileNotFoundError(f"reference video {ref.video or '(none)'} not found")
    remove(scene)
    img = _load_movie(ref.video)
    if not ref.width or not ref.height:
        ref.width, ref.height = int(img.size[0]), int(img.size[1])
    messages = []
    if img.frame_duration and img.frame_duration < ref.video_start + ref.n_frames:
        messages.append(f"{os.path.basename(ref.video)} holds {img.frame_duration} frames, "
                        f"the capture reaches frame {ref.video_start + ref.n_frames}")
    mesh = _plane_mesh(PLANE_NAME, ref)
    mesh.materials.append(_material(PLANE_NAME, img, ref, scene))
    plane = bpy.data.objects.new(PLANE_NAME, mesh)
    (collection or scene.collection).objects.link(plane)
    actor_objects = [o for o in actor_objects if o is not None]
    plane[KEY] = {
        "video": ref.video, "fps": ref.fps, "video_start": ref.video_start,
        "n_frames": ref.n_frames, "frame_start": ref.frame_start,
        "audio_start": ref.audio_start, "actor": [o.name for o in actor_objects],
        "placement": placement, "opacity": 1.0, "show": True, "sound": "", "sound_on": True,
    }
    plane.display_type = 'TEXTURED'
    place(scene, plane, actor_objects, placement)
    set_opacity(plane, opacity)
    strip, msg = add_sound(scene, ref)
    messages.append(msg)
    if strip is not None:
        plane[KEY]["sound"] = strip.name
    set_sound(scene, sound)
    show(scene, visible)
    show_textures(scene)
    return {"plane": plane.name, "image": img.name,
            "sound": strip.name if strip is not None else None, "messages": messages}


def show_textures(scene) -> None:
    """Solid shading with Texture colour and no specular highlight (the viewports of every
    screen and the scene's Workbench render), so the plane shows the movie as it is."""
    shadings = [scene.display.shading]
    for screen in bpy.data.screens:
        for area in screen.areas:
            for space in area.spaces:
                if space.type == 'VIEW_3D':
                    shadings.append(space.shading)
    for sh in shadings:
        sh.color_type = 'TEXTURE'
        sh.show_specular_highlight = False


# --------------------------------------------------------------------------------------
# The camera


def frame_all(scene, objects, camera=None, margin: float = 1.08):
    """Aim a camera from the front (looking along +Y) so every one of ``objects`` (their
    meshes, with children) is in view with a small margin; the scene camera, else a new
    ``EMOCA_camera``. Returns the camera object; None when there is nothing to frame."""
    from mathutils import Vector

    _update(scene)
    b = _bounds([o for o in objects if o is not None])
    if b is None:
        return None
    lo, hi = b
    cam = camera or scene.camera
    if cam is None or cam.type != 'CAMERA':
        data = bpy.data.cameras.new(CAMERA_NAME)
        cam = bpy.data.objects.new(CAMERA_NAME, data)
        scene.collection.objects.link(cam)
    scene.camera = cam
    data = cam.data
    data.type = 'PERSP'
    rx = scene.render.resolution_x * scene.render.pixel_aspect_x
    ry = scene.render.resolution_y * scene.render.pixel_aspect_y
    fit = data.sensor_fit
    if fit == 'AUTO':
        fit = 'HORIZONTAL' if rx >= ry else 'VERTICAL'
    if fit == 'HORIZONTAL':
        tx = math.tan(data.angle_x / 2) if data.sensor_fit != 'AUTO' else math.tan(data.angle / 2)
        ty = tx * ry / rx
    else:
        ty = math.tan(data.angle_y / 2) if data.sensor_fit != 'AUTO' else math.tan(data.angle / 2)
        tx = ty * rx / ry
    w, h = hi.x - lo.x, hi.z - lo.z
    dist = max(w / 2 / tx, h / 2 / ty) * margin
    centre = Vector(((lo.x + hi.x) / 2, lo.y - dist, (lo.z + hi.z) / 2))
    cam.location = centre
    cam.rotation_mode = 'XYZ'
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    data.clip_start = max(0.001, min(0.01, dist / 100))
    data.clip_end = max(100.0, (hi.y - lo.y + dist) * 4)
    return cam
