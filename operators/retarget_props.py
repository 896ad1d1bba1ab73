"""Retarget settings: ``scene.emoca_retarget`` (the mapping shown and edited before baking,
calibration, bones, method, timing, preset path).

Only bpy is imported here (registration stays cheap): the mapping is filled by the
operators in :mod:`.ops_retarget` (``Guess Mapping``, a preset, or the first Retarget).

* ``channels``: one row per capture channel (an ARKit name): the shape keys it drives
  (comma-separated, on every target mesh that has them), enabled, and its calibration
  (gain, offset, clamp min/max, smoothing).
* ``bones``: one row per role (head, jaw, left_eye, right_eye): the bone, enabled, the
  signed axis mapping, gain, offset and limits (degrees).
"""

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty,
                       FloatVectorProperty, IntProperty, PointerProperty, StringProperty)

ROLES = (("head", "Head"), ("jaw", "Jaw"), ("left_eye", "Left Eye"), ("right_eye", "Right Eye"))
_AXIS_ITEMS = [(a, a, f"Take the capture's {a.lstrip('-')} rotation"
                + (" negated" if a.startswith("-") else ""))
               for a in ("X", "-X", "Y", "-Y", "Z", "-Z")]


def _set_key(self, context):
    """The key picker writes the channel's key list (one key; type commas for several)."""
    if self.key_pick:
        self.keys = self.key_pick
        self["key_pick"] = ""


class EMOCA_RetargetChannel(bpy.types.PropertyGroup):
    channel: StringProperty(name="Channel", description="Capture channel (an ARKit name)")
    keys: StringProperty(
        name="Shape Keys",
        description="Shape keys this channel drives, comma-separated (one channel may drive "
                    "several, e.g. browInnerUp_L, browInnerUp_R)")
    key_pick: StringProperty(
        name="Set Key", description="Pick the shape key this channel drives",
        update=_set_key, options={'SKIP_SAVE'})
    enabled: BoolProperty(name="Enabled", description="Bake this channel", default=True)
    gain: FloatProperty(name="Gain", description="Multiplies the channel", default=1.0,
                        soft_min=0.0, soft_max=3.0)
    offset: FloatProperty(name="Offset", description="Added after the gain", default=0.0,
                          soft_min=-1.0, soft_max=1.0)
    min: FloatProperty(name="Min", description="Clamp: lowest value keyed", default=0.0,
                       soft_min=-1.0, soft_max=1.0)
    max: FloatProperty(name="Max", description="Clamp: highest value keyed", default=1.0,
                       soft_min=0.0, soft_max=2.0)
    smoothing: FloatProperty(
        name="Smoothing", description="Zero-phase smoothing: 0 = none, 1 = strong (about 10 "
        "frames)", default=0.0, min=0.0, max=1.0, subtype='FACTOR')


class EMOCA_RetargetBone(bpy.types.PropertyGroup):
    role: StringProperty(name="Role", description="head, jaw, left_eye or right_eye")
    bone: StringProperty(name="Bone", description="The character's bone for this rotation "
                         "(empty: not keyed)")
    enabled: BoolProperty(name="Enabled", default=True)
    axis_x: EnumProperty(name="X", description="Which capture axis drives the bone's X "
                         "(capture axes: X the actor's left, Y up, Z out of the face)",
                         items=_AXIS_ITEMS, default='X')
    axis_y: EnumProperty(name="Y", description="Which capture axis drives the bone's Y",
                         items=_AXIS_ITEMS, default='Y')
    axis_z: EnumProperty(name="Z", description="Which capture axis drives the bone's Z",
                         items=_AXIS_ITEMS, default='Z')
    gain: FloatProperty(name="Gain", description="Multiplies the rotation", default=1.0,
                        soft_min=0.0, soft_max=3.0)
    offset: FloatVectorProperty(name="Offset", description="Added rotation, degrees",
                                size=3, default=(0.0, 0.0, 0.0))
    limit_min: FloatVectorProperty(name="Min", description="Lower limits, degrees", size=3,
                                   default=(-180.0, -180.0, -180.0))
    limit_max: FloatVectorProperty(name="Max", description="Upper limits, degrees", size=3,
                                   default=(180.0, 180.0, 180.0))


class EMOCA_RetargetSettings(bpy.types.PropertyGroup):
    method: EnumProperty(
        name="Method", description="How capture curves find the character's shape keys",
        items=[('name', "By Name", "ARKit names (any case, prefixes, _L/_R) and the CC4, "
                "VRM and MetaHuman alias tables; the mapping below, editable"),
               ('geometry', "By Geometry", "Any key names: find the face in a render of the "
                "character, then solve per frame the key weights that best reproduce the "
                "actor's landmark motion")],
        default='name')
    use_aliases: BoolProperty(
        name="Alias Tables", description="Also match Character Creator 4, VRoid/VRM and "
        "MetaHuman-style names", default=True)
    channels: CollectionProperty(type=EMOCA_RetargetChannel)
    active_channel: IntProperty(name="Active Channel", default=0, min=0)
    mapping_target: StringProperty(
        name="Mapped For", description="The mesh the mapping was guessed for")
    unmapped_keys: StringProperty(
        name="Unmapped Keys", description="Shape keys no channel drives (comma-separated)")
    bones: CollectionProperty(type=EMOCA_RetargetBone)
    use_bones: BoolProperty(name="Bones", description="Key the head, jaw and eye bones",
                            default=True)
    eye_drive: EnumProperty(
        name="Eyes", description="Drive each eye one way only (on avatars whose eyeLook "
        "shape keys also rotate the eyeballs, keying both would double the gaze)",
        items=[('auto', "Auto", "Chosen by what the character has: the eye bones when they "
                "carry the eyeballs or no eyeLook key rotates one, else the eyeLook keys"),
               ('bones', "Eye Bones", "Key the eye bones; eyeLook keys that rotate an eyeball "
                "are not keyed"),
               ('shape_keys', "eyeLook Keys", "Key the eyeLook shape keys (weights that "
                "reproduce the gaze on keys that rotate an eyeball); eye bones not keyed")],
        default='auto')
    eye_status: StringProperty(name="Eyes Driven By", default="",
                               description="How the last Retarget drove the eyes, and why")
    use_neutral_frame: BoolProperty(
        name="Neutral Frame", description="Zero the actor's resting expression: the curves "
        "are measured from their values at the neutral frame", default=False)
    neutral_frame: IntProperty(
        name="Frame", description="Capture frame (0 = first) where the actor's face rests",
        default=0, min=0)
    use_frame_range: BoolProperty(
        name="Frame Range", description="Bake only part of the capture", default=False)
    frame_first: IntProperty(name="First", description="First capture frame baked (0 = the "
                             "capture's first)", default=0, min=0)
    frame_last: IntProperty(name="Last", description="Last capture frame baked", default=0,
                            min=0)
    frame_offset: IntProperty(
        name="Frame Offset", description="Shift the baked keys by this many scene frames "
        "(capture frame f lands on Start Frame + f + offset)", default=0)
    reduce_keys: BoolProperty(
        name="Reduce Keys", description="Keep only the keys each curve needs to stay within "
        "the tolerance of the dense bake (one key per frame) at every frame; off: dense",
        default=True)
    key_tolerance: FloatProperty(
        name="Weight Tolerance", description="Largest shape-key weight difference from the "
        "dense bake at any frame", default=0.01, min=1e-5, max=0.5, precision=4, step=0.1)
    angle_tolerance: FloatProperty(
        name="Angle Tolerance", description="Largest bone rotation difference from the dense "
        "bake at any frame, in degrees", default=0.2, min=1e-4, max=10.0, precision=3,
        step=1)
    preset_path: StringProperty(
        name="Preset", description="Retarget preset (.json): mapping, calibration, bones, "
        "neutral frame and frame offset", subtype='FILE_PATH', default="")
    status: StringProperty(name="Status", default="")
    correspondence: StringProperty(name="Face Found", default="",
                                   description="Result of Find Face (geometric method)")


CLASSES = (EMOCA_RetargetChannel, EMOCA_RetargetBone, EMOCA_RetargetSettings)


def register_props():
    bpy.types.Scene.emoca_retarget = PointerProperty(type=EMOCA_RetargetSettings)


def unregister_props():
    if hasattr(bpy.types.Scene, "emoca_retarget"):
        del bpy.types.Scene.emoca_retarget
