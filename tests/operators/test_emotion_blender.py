"""Emotion in Blender, in the installed extension (private HOME, one subprocess): the
Emotion panel drawn (real UILayout API checked) with no capture, a capture without emotion
and a capture with emotion; emotion curves keyed as custom properties on the rig through
bpy.ops; the timeline's boxes; Find Similar Frames jumping to the nearest frame in
emotion-feature space, with a library folder of other captures; Jump / Next Match."""
import importlib
import importlib.util
from pathlib import Path

import numpy as np
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


EMOTION_CAPTURE = r'''
def make_emotion_capture(path, n=40, seed=0, plant=None):
    """A capture whose dominant emotion is happy (frames 0-14), sad (15-29), surprise
    (30-39), with one flicker frame (7: angry) the timeline merges away. Emotion
    features are random and far apart, except ``plant`` = {frame: vector}."""
    cf = importlib.import_module(MOD + ".emoca_blender.capture_file")
    arkit = importlib.import_module(MOD + ".emoca_blender.arkit")
    emo = importlib.import_module(MOD + ".emoca_blender.emotion.network")
    rng = np.random.default_rng(seed)
    cap = cf.load_capture(make_tiny_capture(path, n=n))
    probs = rng.random((n, 7)) * 0.1
    probs[:15, 3] += 1.0
    probs[15:30, 4] += 1.0
    probs[30:, 5] += 1.0
    probs[7, 0] += 2.0
    probs /= probs.sum(1, keepdims=True)
    feats = rng.standard_normal((n, 32)) * 5.0
    for f, v in (plant or {}).items():
        feats[f] = v
    arrays = dict(cap.arrays, emotion_probs=probs, emotion_features=feats)
    meta = dict(cap.meta, emotion={"frames_analysed": n, "stride": 1,
                                   "classes": list(emo.CLASS_NAMES)})
    names = dict(cap.names, emotion_probs=emo.CLASS_NAMES)
    cf.save_capture(cf.make_capture(arrays, meta, names), path)
    return path, probs, feats
'''


@tx.needs_bpy
def test_emotion_panel_curves_and_retrieval(built_zip, tmp_path):
    res = tx.run_blender_script(tmp_path, '''
        install(enable=True)
        scene = bpy.context.scene
        props, es = scene.emoca, scene.emoca_emotion
        # the scene at the capture's 30 fps (Retime Scene to Clip): the frames checked below
        # are one scene frame per captured frame
        props.timing, scene.render.fps = 'CLIP', 30
        ba = importlib.import_module(MOD + ".operators.scene.blender_anim")
        tmp = os.getcwd()
        out = {}
        EMO_OPS = ("key_emotion", "emotion_find_similar", "emotion_jump")

        def emotion_panel():
            d = draw_all()
            return d["Emotion"]

        # 1. no capture
        for o in list(bpy.data.objects):
            bpy.data.objects.remove(o)
        log = emotion_panel()
        out["none"] = dict(labels=[c[1] for c in log if c[0] == "label"],
                           polls={o: poll(o) for o in EMO_OPS})

        # 2. a capture without emotion curves
        props.capture_path = str(make_tiny_capture(os.path.join(tmp, "plain.capture.npz"), n=8))
        log = emotion_panel()
        out["plain"] = dict(labels=[c[1] for c in log if c[0] == "label"],
                            polls={o: poll(o) for o in EMO_OPS})

        # 3. a capture with emotion: frame 5's feature planted near frame 33 (and 22,
        # farther); a library clip holds a frame nearer still
        rng = np.random.default_rng(7)
        q = rng.standard_normal(32) * 5.0
        path, probs, feats = make_emotion_capture(
            os.path.join(tmp, "actor.capture.npz"),
            plant={5: q, 33: q + 0.1, 22: q + 0.3, 6: q + 0.01})
        os.makedirs(os.path.join(tmp, "lib"))
        make_emotion_capture(os.path.join(tmp, "lib", "other.capture.npz"), n=20, seed=3,
                             plant={12: q + 0.05})
        props.capture_path = str(path)
        props.frame_start = 1
        scene.frame_set(12)
        log = emotion_panel()
        out["emotion_norig"] = dict(
            labels=[c[1] for c in log if c[0] == "label"],
            ops=[c[1] for c in log if c[0] == "operator"],
            progress=[c[1] for c in log if c[0] == "progress"],
            polls={o: poll(o) for o in EMO_OPS})

        # key the curves on the rig: Build Rig, then Key Emotion Curves
        r_rig = bpy.ops.emoca.build_rig()
        arm = props.actor_armature
        before = {k for k in ba.read_fcurves(arm)}
        keyed_by_rig = sorted(k[0] for k in before if k[0].startswith('["emotion_'))
        r_key = bpy.ops.emoca.key_emotion()
        curves = ba.read_fcurves(arm)
        emo = {k[0]: (f.tolist(), v.tolist()) for k, (f, v) in curves.items()
               if k[0].startswith('["emotion_')}
        scene.frame_set(10)
        at10 = {n: float(arm[n]) for n in ("emotion_happy", "emotion_angry")}
        ui = arm.id_properties_ui("emotion_happy").as_dict()
        r_key2 = bpy.ops.emoca.key_emotion()          # again: replaced, not duplicated
        out["keyed"] = dict(rig=sorted(r_rig), key=sorted(r_key), key2=sorted(r_key2),
                            bone_curves_kept=sorted(map(list, before - set(ba.read_fcurves(arm)))),
                            n_after=len(ba.read_fcurves(arm)), n_before=len(before),
                            keyed_by_rig=keyed_by_rig,
                            emo=emo, at10=at10, ui=[ui.get("min"), ui.get("max")],
                            props=sorted(k for k in arm.keys() if k.startswith("emotion_")))
        out["probs"] = probs.tolist()
        log = emotion_panel()
        out["emotion_rig"] = dict(labels=[c[1] for c in log if c[0] == "label"])

        # timeline box -> jump
        scene.frame_set(1)
        r = bpy.ops.emoca.emotion_jump(frame=20)
        out["jump"] = [sorted(r), scene.frame_current]

        # find similar from frame 6 (capture frame 5): the own neighbourhood (gap 3) is
        # left out, so frame 34 (capture 33) wins in this clip
        es.min_gap = 3
        es.count = 3
        scene.frame_set(6)
        r = bpy.ops.emoca.emotion_find_similar()
        out["similar"] = dict(result=sorted(r), frame=scene.frame_current,
                              matches=[(m.clip, m.frame, round(m.distance, 4), m.here, m.label)
                                       for m in es.matches], status=es.status)
        r = bpy.ops.emoca.emotion_jump()               # next match of this capture
        out["next"] = [sorted(r), scene.frame_current]
        es.library = os.path.join(tmp, "lib")
        scene.frame_set(6)
        bpy.ops.emoca.emotion_find_similar()
        out["library"] = [(m.clip, m.frame, round(m.distance, 4), m.here) for m in es.matches]
        log = emotion_panel()
        out["panel_matches"] = [c for c in log if c[0] in ("template_list", "operator")]
        # outside the capture: a clear report, nothing changes
        scene.frame_set(500)
        try:
            bpy.ops.emoca.emotion_find_similar()
            out["outside"] = "no error"
        except RuntimeError as e:
            out["outside"] = str(e)
        result(out)
    ''', str(built_zip), libs=tx.FAKE_LAYOUT + tx.TINY_CAPTURE + EMOTION_CAPTURE)

    assert "No capture yet: capture a video or choose a .capture.npz file" in res["none"]["labels"]
    assert res["none"]["polls"] == {"key_emotion": False, "emotion_find_similar": False,
                                    "emotion_jump": True}
    assert any("no emotion curves" in t for t in res["plain"]["labels"])
    assert not res["plain"]["polls"]["key_emotion"]
    assert not res["plain"]["polls"]["emotion_find_similar"]

    e = res["emotion_norig"]
    assert "Emotion over 40 frames (dominant class)" in e["labels"]
    # the timeline: three boxes (the 1-frame flicker merged), each jumps to its stretch
    assert e["ops"].count("emoca.emotion_jump") == 3
    assert "1-15 | 16-30 | 31-40" in e["labels"]
    assert e["progress"][0].startswith("happy ")           # frame 12 -> capture frame 11
    assert e["polls"]["emotion_find_similar"] and e["polls"]["key_emotion"] is False

    k = res["keyed"]
    assert k["rig"] == ["FINISHED"] and k["key"] == ["FINISHED"] and k["key2"] == ["FINISHED"]
    assert k["bone_curves_kept"] == []                     # the rig's curves are still there
    # Build Rig already keyed the 7 class curves; keying again replaces, never duplicates
    assert len(k["keyed_by_rig"]) == 7
    assert k["n_after"] == k["n_before"]
    classes = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert k["props"] == sorted(f"emotion_{c}" for c in classes)
    probs = res["probs"]
    for j, c in enumerate(classes):
        frames, vals = k["emo"][f'["emotion_{c}"]']
        assert frames == [float(f) for f in range(1, 41)]
        assert vals == pytest.approx([p[j] for p in probs], abs=1e-6)
    assert k["at10"]["emotion_happy"] == pytest.approx(probs[9][3], abs=1e-5)
    assert k["ui"] == [0.0, 1.0]
    assert any(t.startswith("Keyed on ") for t in res["emotion_rig"]["labels"])

    assert res["jump"] == [["FINISHED"], 20]
    s = res["similar"]
    assert s["result"] == ["FINISHED"] and s["frame"] == 34
    m = s["matches"]
    assert [x[1] for x in m] == [34, 23] + [x[1] for x in m[2:]]
    assert all(x[3] for x in m) and all(abs(x[1] - 6) > 3 for x in m)
    assert m[0][2] == pytest.approx(0.1 * 32 ** 0.5, rel=1e-3)
    assert m[0][4] == "surprise" and m[1][4] == "sad"
    assert res["next"] == [["FINISHED"], 23]
    lib = res["library"]
    assert lib[0][0] == "other" and lib[0][1] == 12 and not lib[0][3]
    assert lib[1][1] == 34 and lib[1][3]
    assert ["template_list", "EMOCA_UL_emotion_matches"] in res["panel_matches"]
    assert "outside the capture" in res["outside"]


# -- the emotion jobs in the worker: refine, train, predict ---------------------------------

WORKER_PY = tx.ROOT / ".venv" / "bin" / "python"
DEMO = tx.ROOT / ".cache" / "demo" / "clips" / "single_face.mp4"


@tx.needs_bpy
@pytest.mark.skipif(not WORKER_PY.is_file(), reason="the worker Python .venv is missing")
def test_emotion_jobs_refine_train_predict(built_zip, tmp_path):
    """Through bpy.ops with the REAL worker: Refine Expression writes a refined capture
    beside the scene's (the scene then uses it; the video found from the capture), Train
    Emotion MLP trains on a table of the two captures, Predict writes valence and arousal
    into the capture in place and Key Emotion Curves keys them; a mismatched MLP fails with
    the worker's reason and leaves the capture as it was; the panel's reasons."""
    pytest.importorskip("h5py")
    if not DEMO.is_file():
        pytest.skip(f"demo clip {DEMO} missing")
    from conftest import run_cli

    from emoca_blender.emotion import network as emotion
    try:
        emotion.fer_data_dir()
    except emotion.EmotionUnavailable:
        pytest.skip("fer missing")
    from emoca_blender.emotion import mlp as emotion_mlp

    # an MLP trained on other inputs (5 columns): Predict must refuse it
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 5)).astype(np.float32)
    emotion_mlp.train(X, X[:, 0], X[:, 1], (X[:, 2] > 0).astype(int), ("a", "b"), hidden=16,
                      max_epochs=2, input_names=tuple(f"x{i}" for i in range(5))
                      ).save(tmp_path / "other.pt")
    cap = tmp_path / "actor.capture.npz"
    r = run_cli("capture", DEMO, "-o", cap, "--no-cache")
    assert r.returncode == 0, r.stderr
    res = tx.run_blender_script(tmp_path, r'''
        import numpy as np
        install(enable=True)
        scene = bpy.context.scene
        props, es = scene.emoca, scene.emoca_emotion
        prefs = bpy.context.preferences.addons[MOD].preferences
        prefs.worker_python = sys.argv[2]
        CF = importlib.import_module(MOD + ".emoca_blender.capture_file")
        ba = importlib.import_module(MOD + ".operators.scene.blender_anim")
        JOBS = ("emotion_refine", "emotion_train", "emotion_predict")
        out = {}

        def panel():
            return [c for c in draw_all()["Emotion"] if c[0] in ("label", "operator")]

        props.capture_path = sys.argv[3]
        props.video_path = ""                    # the video comes from the capture itself
        out["start"] = dict(polls={o: poll(o) for o in JOBS}, panel=panel())

        es.refine_keyframes = 30
        es.refine_strength = 0.5
        t0 = time.perf_counter()
        r = bpy.ops.emoca.emotion_refine(iterations=20)   # enough for Adam to beat the prior
        refined = props.capture_path
        c = CF.load_capture(refined)
        c0 = CF.load_capture(sys.argv[3])
        out["refine"] = dict(result=sorted(r), path=refined, status=props.status,
                             seconds=time.perf_counter() - t0,
                             complete=CF.is_complete(refined),
                             settings=c.meta["emotion_refine"]["settings"],
                             frames=c.meta["emotion_refine"]["summary"]["frames"],
                             changed=float(np.abs(c["expression"] - c0["expression"]).max()),
                             flag=np.asarray(c["emotion_refined"]).tolist(),
                             keyframes=c.meta["emotion_refine"]["summary"]["keyframes"],
                             markers=sorted((m.frame, m.name) for m in scene.timeline_markers),
                             panel=panel())

        table = os.path.join(os.getcwd(), "table.csv")
        with open(table, "w") as f:
            f.write("capture,valence,arousal,label\n")
            f.write(f"{sys.argv[3]},0.6,0.4,happy\n{refined},-0.5,0.2,sad\n")
        es.mlp_path = os.path.join(os.getcwd(), "emo.pt")
        out["no_table"] = poll("emotion_train")
        es.train_table = table
        r = bpy.ops.emoca.emotion_train()
        out["train"] = dict(result=sorted(r), status=props.status,
                            exists=os.path.isfile(es.mlp_path))

        props.capture_path = sys.argv[3]
        r = bpy.ops.emoca.emotion_predict()
        c = CF.load_capture(sys.argv[3])
        out["predict"] = dict(result=sorted(r), status=props.status,
                              valence=np.asarray(c["valence"]).tolist(),
                              arousal=np.asarray(c["arousal"]).tolist(),
                              valid=np.asarray(c["valid"]).tolist())
        r_rig = bpy.ops.emoca.build_rig()
        r_key = bpy.ops.emoca.key_emotion()
        arm = props.actor_armature
        curves = ba.read_fcurves(arm)
        out["keyed"] = dict(rig=sorted(r_rig), key=sorted(r_key),
                            valence=[v.tolist() for k, (f, v) in curves.items()
                                     if k[0] == '["emotion_valence"]'])
        # what the refinement touched, keyed on the rig: at once after the job (as its
        # _done does, here with the rig built), and by Key Emotion Curves
        props.capture_path = refined
        JB = importlib.import_module(MOD + ".operators.ops_emotion_jobs")
        keyed_on = JB.mark_refined(bpy.context, [0, 30], 0.5)
        fl = ba.read_fcurves(arm).get(('["emotion_refined"]', 0))
        out["flag"] = dict(on=keyed_on, arm=arm.name,
                           frames=fl[0].tolist() if fl else None,
                           values=fl[1].tolist() if fl else None,
                           markers=sorted((m.frame, m.name) for m in scene.timeline_markers),
                           start=props.frame_start,
                           key=sorted(bpy.ops.emoca.key_emotion()),
                           desc=arm.id_properties_ui("emotion_refined").as_dict().get(
                               "description", ""))
        props.capture_path = sys.argv[3]

        # an MLP trained on other inputs: the worker's reason, the capture untouched
        with open(sys.argv[3], "rb") as f:
            before = f.read()
        es.mlp_path = sys.argv[4]
        raised = ""
        try:
            r = bpy.ops.emoca.emotion_predict()
        except RuntimeError as e:           # an ERROR report raises in background mode
            r, raised = {"RAISED"}, str(e)
        with open(sys.argv[3], "rb") as f:
            same = f.read() == before
        out["bad"] = dict(result=sorted(r), raised=raised, status=props.status,
                          error=props.last_error,
                          same=same, exists=os.path.isfile(sys.argv[3]), panel=panel())
        result(out)
    ''', str(built_zip), str(WORKER_PY), str(cap), str(tmp_path / "other.pt"),
        libs=tx.FAKE_LAYOUT, timeout=600)

    s = res["start"]
    assert s["polls"] == {"emotion_refine": True, "emotion_train": False,
                          "emotion_predict": False}
    labels = [c[1] for c in s["panel"] if c[0] == "label"]
    assert any("Choose a training table" in t for t in labels)
    assert any("Choose an Emotion MLP" in t for t in labels)

    rf = res["refine"]
    assert rf["result"] == ["FINISHED"], rf
    assert rf["path"].endswith("actor_refined.capture.npz") and rf["complete"]
    assert rf["settings"]["keyframe_step"] == 30 and rf["settings"]["strength"] == 0.5
    assert rf["settings"]["iterations"] == 20 and rf["frames"] >= 2
    assert rf["changed"] > 1e-4                       # the expression did change
    # the frames it touched: the flag holds the Strength there, markers at the keyframes
    flag = np.array(rf["flag"])
    assert set(np.round(flag, 6)) <= {0.0, 0.5} and (flag == 0.5).sum() >= 2
    assert rf["markers"] == [[1 + f, "emotion S=0.50"] for f in rf["keyframes"]]
    assert rf["status"].startswith("Refined ") and "actor_refined" in rf["status"]
    assert any(t.startswith("Refined ") for t in
               [c[1] for c in rf["panel"] if c[0] == "label"])

    assert res["no_table"] is False
    tr = res["train"]
    assert tr["result"] == ["FINISHED"] and tr["exists"], tr
    assert tr["status"].startswith("Trained emo.pt")

    p = res["predict"]
    assert p["result"] == ["FINISHED"], p
    v, valid = np.array(p["valence"], float), np.array(p["valid"], bool)
    assert np.isfinite(v[valid]).all() and len(v) == len(valid)
    k = res["keyed"]
    assert k["key"] == ["FINISHED"] and len(k["valence"]) == 1
    assert np.allclose(np.array(k["valence"][0])[valid], v[valid], atol=1e-5)

    fk = res["flag"]
    assert fk["on"] == fk["arm"] and fk["frames"] is not None, fk
    assert fk["key"] == ["FINISHED"] and "Strength" in fk["desc"]
    assert np.allclose(fk["values"], flag, atol=1e-6)
    assert fk["frames"][0] == fk["start"] and len(fk["frames"]) == len(flag)
    assert fk["markers"] == [[fk["start"], "emotion S=0.50"], [fk["start"] + 30,
                                                                "emotion S=0.50"]]

    b = res["bad"]
    assert b["result"] == ["RAISED"] and "Prediction failed" in b["raised"], b
    assert b["status"] == "Prediction failed" and "takes 5 inputs" in b["error"], b
    assert b["same"] and b["exists"]
