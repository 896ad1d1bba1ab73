"""The Retarget and Export panels as an artist uses them, in the installed extension
(private HOME, one subprocess): the mapping shown before baking and edited per channel,
calibration, bone pickers with axis mapping and limits, neutral frame, frame range and
offset, presets saved and loaded, Live Link Face CSV export and import, and every panel
drawn (with the real UILayout API checked) in each state."""
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
try:
    tx = importlib.import_module("test_extension")
except ImportError:  # --import-mode=importlib
    _spec = importlib.util.spec_from_file_location("test_extension", HERE / "test_extension.py")
    tx = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(tx)


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    return tx.bx.build(tx.ROOT, tmp_path_factory.mktemp("dist"))


@tx.needs_bpy
def test_retarget_panel_mapping_bones_presets_livelink(built_zip, tmp_path):
    res = tx.run_blender_script(tmp_path, '''
        install(enable=True)
        props = bpy.context.scene.emoca
        props.timing = 'CLIP'      # the frames checked below: one key per captured frame
        rs = bpy.context.scene.emoca_retarget
        ops_retarget = importlib.import_module(MOD + ".operators.ops_retarget")
        tmp = os.getcwd()
        out = {}
        for o in list(bpy.data.objects):
            bpy.data.objects.remove(o)
        cap_path = make_tiny_capture(os.path.join(tmp, "tiny.capture.npz"), n=8)
        props.capture_path = str(cap_path)
        cf = importlib.import_module(MOD + ".emoca_blender.capture_file")
        cap = cf.load_capture(cap_path)

        # a character: vendor-named keys, an extra key, and an armature with unknown bones
        bpy.ops.mesh.primitive_cube_add()
        face = bpy.context.active_object
        face.name = "Face"
        face.shape_key_add(name="Basis")
        for n in ("ACME_JawOpen", "ACME_EyeBlinkLeft", "browInnerUp_L", "browInnerUp_R", "Extra"):
            face.shape_key_add(name=n).value = 0.0
        arm_data = bpy.data.armatures.new("Robot")
        arm = bpy.data.objects.new("Robot", arm_data)
        bpy.context.scene.collection.objects.link(arm)
        bpy.context.view_layer.objects.active = arm
        bpy.ops.object.mode_set(mode="EDIT")
        for name, h, t in (("Bone", (0, 0, 0), (0, 0, 1)), ("Bone.001", (0, 0, 1), (0, -1, 1))):
            eb = arm_data.edit_bones.new(name)
            eb.head, eb.tail = h, t
        bpy.ops.object.mode_set(mode="OBJECT")
        face.parent = arm
        props.target_mesh, props.target_armature = face, arm
        d = draw_all()
        out["before"] = dict(mapping=labels(d, "Shape Key Mapping"), bones=labels(d, "Bones"),
                             polls={o: poll(o) for o in ("retarget", "retarget_guess",
                                                         "export_livelink")})

        r = bpy.ops.emoca.retarget_guess()
        rows = {c.channel: (c.keys, c.enabled) for c in rs.channels}
        d = draw_all()
        out["guessed"] = dict(result=sorted(r), n_rows=len(rs.channels),
                              jaw=rows["jawOpen"], brow=rows["browInnerUp"],
                              smile=rows["mouthSmileLeft"], unmapped=rs.unmapped_keys,
                              bones=[(b.role, b.bone, b.enabled) for b in rs.bones],
                              mapping=labels(d, "Shape Key Mapping"), bones_panel=labels(d, "Bones"),
                              drawn=[c for c in d["Shape Key Mapping"] if c[0] == "template_list"])

        # edit: calibrate jawOpen, drop the blink, map Extra from mouthSmileLeft (the key
        # picker), pick the jaw bone with an axis swap and a limit
        ch = {c.channel: c for c in rs.channels}
        ch["jawOpen"].gain, ch["jawOpen"].max = 2.0, 0.5
        ch["eyeBlinkLeft"].enabled = False
        ch["mouthSmileLeft"].key_pick = "Extra"
        ch["mouthSmileLeft"].enabled = True
        rs.active_channel = list(ch).index("jawOpen")
        jaw = next(b for b in rs.bones if b.role == "jaw")
        jaw.bone, jaw.enabled = "Bone.001", True
        jaw.axis_x, jaw.axis_y, jaw.axis_z = "-X", "Z", "Y"
        jaw.gain, jaw.limit_min = 8.0, (-10.0, -180.0, -180.0)
        rs.use_neutral_frame, rs.neutral_frame = True, 2
        rs.use_frame_range, rs.frame_first, rs.frame_last = True, 1, 6
        rs.frame_offset = 10
        rs.reduce_keys = False        # dense: one key per frame, the timing checked below
        d = draw_all()
        out["edited"] = dict(smile=(ch["mouthSmileLeft"].keys, ch["mouthSmileLeft"].key_pick),
                             detail=[c for c in d["Shape Key Mapping"] if c[0] in ("prop", "prop_search")],
                             bones=[c for c in d["Bones"] if c[0] in ("prop", "prop_search")],
                             timing=[c[1] for c in d["Neutral, Frames & Presets"] if c[0] == "prop"])

        r = bpy.ops.emoca.retarget()
        key = face.data.shape_keys
        fc = {f.data_path: f for f in key.animation_data.action.layers[0].strips[0].channelbags[0].fcurves}
        def curve(dp):
            f = fc[dp]
            return [[k.co[0], k.co[1]] for k in f.keyframe_points]
        out["baked"] = dict(result=sorted(r), status=rs.status, paths=sorted(fc),
                            jaw=curve('key_blocks["ACME_JawOpen"].value'),
                            extra=curve('key_blocks["Extra"].value'),
                            bone_action=arm.animation_data.action.name if arm.animation_data else None)
        ark = list(cap.names["arkit"])
        out["cap"] = dict(jaw=cap["arkit"][:, ark.index("jawOpen")].tolist(),
                          smile=cap["arkit"][:, ark.index("mouthSmileLeft")].tolist(),
                          jaw_rot=cap["jaw"].tolist())
        angles = []
        for f in range(12, 18):
            bpy.context.scene.frame_set(f)
            q = arm.pose.bones["Bone.001"].rotation_quaternion
            angles.append(2 * math.degrees(math.acos(min(1.0, abs(q.w)))))
        out["angles"] = angles

        # presets: save, clear, load back
        preset = os.path.join(tmp, "acme.json")
        r1 = bpy.ops.emoca.retarget_preset_save(filepath=preset)
        saved = json.load(open(preset))
        bpy.ops.emoca.retarget_clear()
        cleared = (len(rs.channels), len(rs.bones))
        rs.use_neutral_frame, rs.frame_offset = False, 0
        r2 = bpy.ops.emoca.retarget_preset_load(filepath=preset)
        ch = {c.channel: c for c in rs.channels}
        out["preset"] = dict(save=sorted(r1), load=sorted(r2), saved=saved, cleared=cleared,
                             jaw=(ch["jawOpen"].keys, ch["jawOpen"].gain, ch["jawOpen"].max),
                             blink=(ch["eyeBlinkLeft"].keys, ch["eyeBlinkLeft"].enabled),
                             bone=[(b.role, b.bone, b.axis_x, b.axis_y, b.axis_z, b.gain, tuple(b.limit_min))
                                   for b in rs.bones if b.bone],
                             neutral=(rs.use_neutral_frame, rs.neutral_frame), offset=rs.frame_offset)
        bad = os.path.join(tmp, "bad.json")
        open(bad, "w").write('{"format": "emoca_blender.retarget_preset", "version": 1, '
                             '"bones": {"nose": {"bone": "x"}}}')
        try:
            bpy.ops.emoca.retarget_preset_load(filepath=bad)
            err = ""
        except RuntimeError as e:
            err = str(e)
        out["bad_preset"] = err

        # the geometric method's panel state
        rs.method = "geometry"
        d = draw_all()
        out["geometry"] = dict(retarget=[c for c in d["Retarget"] if c[0] == "operator"],
                               mapping=labels(d, "Shape Key Mapping"))
        # a cube has no face: MediaPipe finds none, the retarget says so and uses the names
        r = bpy.ops.emoca.retarget()
        d = draw_all()
        out["geometry"].update(result=sorted(r), corr=rs.correspondence,
                               labels=labels(d, "Retarget"))
        rs.method = "name"

        # Live Link Face CSV: export the capture, import it back and bake it
        csv = os.path.join(tmp, "take.csv")
        r = bpy.ops.emoca.export_livelink(filepath=csv)
        header = open(csv).readline().strip().split(",")
        rs.use_frame_range, rs.use_neutral_frame, rs.frame_offset = False, False, 0
        ch["jawOpen"].gain, ch["jawOpen"].max = 1.0, 1.0
        r2 = bpy.ops.emoca.import_livelink(filepath=csv)
        fc = {f.data_path: f for f in key.animation_data.action.layers[0].strips[0].channelbags[0].fcurves}
        jaw_ll = [k.co[1] for k in fc['key_blocks["ACME_JawOpen"].value'].keyframe_points]
        out["livelink"] = dict(export=sorted(r), header=header, rows=len(open(csv).readlines()),
                               imp=sorted(r2), capture_path=props.capture_path, jaw=jaw_ll)
        d = draw_all()
        out["export_panel"] = [c for c in d["Export"] if c[0] == "operator"]

        # a target with no shape keys and no armature: the button says why
        bpy.ops.mesh.primitive_plane_add()
        props.target_mesh, props.target_armature = bpy.context.active_object, None
        d = draw_all()
        out["bad_target"] = dict(retarget=labels(d, "Retarget"), poll=poll("retarget"))
        result(out)
    ''', str(built_zip), libs=tx.FAKE_LAYOUT + tx.TINY_CAPTURE + "\nimport math\n")

    b = res["before"]
    assert any("Not guessed yet" in t for t in b["mapping"])
    assert any("Guess Mapping finds" in t for t in b["bones"])
    assert b["polls"] == {"retarget": True, "retarget_guess": True, "export_livelink": True}

    g = res["guessed"]
    assert g["result"] == ["FINISHED"] and g["n_rows"] == 52
    assert g["jaw"] == ["ACME_JawOpen", True]
    assert g["brow"] == ["browInnerUp_L, browInnerUp_R", True]          # one-to-many
    assert g["smile"] == ["", False]
    assert g["unmapped"] == "Extra"
    assert g["bones"] == [["head", "", False], ["jaw", "", False], ["left_eye", "", False],
                          ["right_eye", "", False]]
    assert any("3 of 52 channels drive shape keys" in t for t in g["mapping"])
    assert any("1 shape keys not driven" in t for t in g["mapping"])
    assert "Extra" in g["mapping"]
    assert any("No head, jaw or eye bone recognised in Robot" in t for t in g["bones_panel"])
    assert g["drawn"] == [["template_list", "EMOCA_UL_retarget_channels"]]

    e = res["edited"]
    assert e["smile"] == ["Extra", ""]                 # the picker wrote the key, then reset
    assert ["prop_search", "key_pick"] in e["detail"] and ["prop", "gain"] in e["detail"]
    assert ["prop_search", "bone"] in e["bones"] and ["prop", "axis_x"] in e["bones"]
    assert ["prop", "limit_max"] in e["bones"]
    assert {"use_neutral_frame", "neutral_frame", "use_frame_range", "frame_first",
            "frame_last", "frame_offset", "preset_path"} <= set(e["timing"])

    k = res["baked"]
    assert k["result"] == ["FINISHED"], k
    assert k["paths"] == ['key_blocks["ACME_JawOpen"].value', 'key_blocks["Extra"].value',
                          'key_blocks["browInnerUp_L"].value', 'key_blocks["browInnerUp_R"].value']
    assert k["bone_action"] == "EMOCA_tiny|Robot"
    c = res["cap"]
    jaw = c["jaw"]
    n0 = jaw[2]
    span = 1 - n0 if n0 < 0.95 else 1.0
    frames = [f for f, _ in k["jaw"]]
    assert frames == list(range(1 + 10 + 1, 1 + 10 + 7))      # Start 1 + offset 10 + frames 1..6
    for (f, v), i in zip(k["jaw"], range(1, 7)):
        want = min(max(2.0 * (jaw[i] - n0) / span, 0.0), 0.5)
        assert abs(v - want) < 1e-5, (i, v, want)
    n0 = c["smile"][2]
    span = 1 - n0 if n0 < 0.95 else 1.0
    for (f, v), i in zip(k["extra"], range(1, 7)):
        want = min(max((c["smile"][i] - n0) / span, 0.0), 1.0)
        assert abs(v - want) < 1e-5
    import numpy as np
    assert max(res["angles"]) <= 10.0 + 1e-3                 # the limit holds
    assert min(res["angles"]) > 0.05                          # and the jaw moves
    want = [min(8 * abs(np.degrees(c["jaw_rot"][i][0])), 10.0) for i in range(1, 7)]
    assert np.allclose(res["angles"], want, atol=0.1)        # gain 8, -X limited at -10 deg
    assert max(want) == 10.0 and min(want) < 9.0

    p = res["preset"]
    assert p["save"] == ["FINISHED"] and p["load"] == ["FINISHED"] and p["cleared"] == [0, 0]
    s = p["saved"]
    assert s["format"] == "emoca_blender.retarget_preset" and s["frame_offset"] == 10
    assert s["mapping"]["mouthSmileLeft"] == ["Extra"] and "eyeBlinkLeft" not in s["mapping"]
    assert s["channels"]["jawOpen"]["gain"] == 2.0 and s["neutral_frame"] == 2
    assert s["bones"]["jaw"]["axes"] == ["-X", "Z", "Y"]
    assert p["jaw"] == ["ACME_JawOpen", 2.0, 0.5]
    assert p["blink"] == ["", False]
    assert p["bone"] == [["jaw", "Bone.001", "-X", "Z", "Y", 8.0, [-10.0, -180.0, -180.0]]]
    assert p["neutral"] == [True, 2] and p["offset"] == 10
    assert "bad.json: bones: unknown role 'nose'" in res["bad_preset"]

    geo = res["geometry"]
    assert ["operator", "emoca.retarget_find_face"] in geo["retarget"]
    assert any("By Geometry" in t for t in geo["mapping"])
    assert geo["result"] == ["FINISHED"]
    assert geo["corr"] == "No face found: fell back to name mapping"
    assert "No face found: fell back to name mapping" in geo["labels"]

    ll = res["livelink"]
    assert ll["export"] == ["FINISHED"] and len(ll["header"]) == 63 and ll["rows"] == 9
    assert ll["header"][:3] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft"]
    assert ll["imp"] == ["FINISHED"] and ll["capture_path"].endswith("take.capture.npz")
    assert np.allclose(ll["jaw"], c["jaw"], atol=1e-4)       # CSV -> capture -> character
    assert ["operator", "emoca.export_livelink"] in res["export_panel"]
    assert ["operator", "emoca.import_livelink"] in res["export_panel"]
    assert ["operator", "emoca.export_fbx"] in res["export_panel"]
    assert ["operator", "emoca.export_gltf"] in res["export_panel"]

    bt = res["bad_target"]
    assert bt["poll"] is False
    assert any("no shape keys and no armature" in t for t in bt["retarget"])
