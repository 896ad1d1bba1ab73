"""Retargeting, the bpy-free part: which character shape key each capture channel drives
(name matching and alias tables), per-channel calibration, bone settings, and presets.

Name matching (:func:`name_mapping`) splits a shape-key name into words (separators
``_ . - : | / space`` and camelCase/PascalCase boundaries), lower-cases them, turns side words
(``L``/``R``/``Left``/``Right``/``Lf``/``Rt``, as a suffix or a prefix) into a trailing
``left``/``right``, and matches a channel when the key's words *end with* the channel's
words, so any vendor prefix (``CC_Base_``, ``A01_``, ``blendShape1.``, ``ARKit_``...) is
ignored. An unsided ARKit channel with no unsided key (``browInnerUp``) drives both sided
keys (``browInnerUp_L`` and ``browInnerUp_R``, as in ICT FaceKit). Channels with no direct
match are looked up in alias tables (:data:`ALIASES`) for the conventions artists meet most:

* ``cc4``: Character Creator 4 (``Eye_Blink_L``, ``Brow_Raise_Inner_L``, ``Eye_L_Look_Down``,
  ``Mouth_Smile_L``, ``Mouth_Roll_In_Upper_L``...);
* ``vrm``: VRoid / VRM (``Fcl_EYE_Close_L``, ``Fcl_MTH_A``, VRM 1.0 ``blinkLeft``, ``aa``...;
  only channels with a direct counterpart: blinks and the A/O/U mouth shapes);
* ``metahuman``: MetaHuman-style control curves (``CTRL_expressions_mouthCornerPullL``,
  ``browRaiseInL``, ``eyeWidenL``, ``noseWrinkleL``, ``jawFwd``...).

A key is driven by at most one channel (direct matches win over aliases).

Calibration (:class:`ChannelCalibration`) per channel::

    v = x - neutral                      (neutral: the value at the neutral frame, or 0)
    v = v / (1 - neutral)  when the neutral is below 1 (full activation still reads 1)
    v = smooth(v, smoothing)             (zero-phase: forward-backward exponential)
    v = clip(gain * v + offset, min, max)

Presets are JSON files (:func:`save_preset` / :func:`load_preset`) holding the mapping, the
calibration, the bone settings, the neutral frame and the frame offset; loading validates
every field and names the one that is wrong.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np

from ..arkit import ARKIT_NAMES
from ..errors import BadInput

PRESET_FORMAT = "emoca_blender.retarget_preset"
PRESET_VERSION = 1

_SIDE = {"l": "left", "left": "left", "r": "right", "right": "right", "lf": "left", "rt": "right"}
_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_IGNORED_KEYS = ("basis", "reference")


class PresetError(BadInput):
    """A retarget preset file is missing or malformed (the message names the field)."""


# ----------------------------------------------------------------------------- names

def words(name: str) -> list[str]:
    """``CC_Base_EyeBlink_L`` -> ['cc', 'base', 'eye', 'blink', 'left'] (sides moved last)."""
    name = name.rsplit(":", 1)[-1] if ":" in name else name
    ws = [w.lower() for part in re.split(r"[\s_.\-:|/]+", name) if part
          for w in _WORD_RE.findall(part)]
    sides = [i for i, w in enumerate(ws) if w in _SIDE]
    if len(sides) >= 1:
        # A single side word, or a side word at either end, becomes the trailing side.
        i = sides[-1] if sides[-1] == len(ws) - 1 else sides[0]
        if len(sides) == 1 or i in (0, len(ws) - 1):
            side = _SIDE[ws.pop(i)]
            ws.append(side)
    return ws


def _suffixes(ws: list[str]) -> set[str]:
    return {"".join(ws[i:]) for i in range(len(ws))}


def _side_of(channel: str) -> tuple[str, str | None]:
    """``eyeBlinkLeft`` -> ('eyeBlink', 'L'); ``jawLeft`` -> ('jawLeft', None) (a direction)."""
    if channel in ("jawLeft", "jawRight", "mouthLeft", "mouthRight"):
        return channel, None
    for side, s in (("Left", "L"), ("Right", "R")):
        if channel.endswith(side):
            return channel[: -len(side)], s
    return channel, None


# Alias tables: {ARKit channel base (no side): [names]}; in a name, {S} is the channel's
# side letter (L/R) and {O} the other side's; an unsided channel whose alias holds {S} is
# split onto both sides (one channel driving two keys).
_CC4 = {
    "eyeBlink": ["Eye_Blink_{S}"], "eyeSquint": ["Eye_Squint_{S}"], "eyeWide": ["Eye_Wide_{S}"],
    "eyeLookDown": ["Eye_{S}_Look_Down"], "eyeLookUp": ["Eye_{S}_Look_Up"],
    "eyeLookOut": ["Eye_{S}_Look_{S}"], "eyeLookIn": ["Eye_{S}_Look_{O}"],
    "jawOpen": ["Jaw_Open"], "jawForward": ["Jaw_Forward"], "jawLeft": ["Jaw_L"],
    "jawRight": ["Jaw_R"], "mouthClose": ["Mouth_Close"],
    "mouthFunnel": ["Mouth_Funnel_Up_{S}"], "mouthPucker": ["Mouth_Pucker_Up_{S}"],
    "mouthLeft": ["Mouth_L"], "mouthRight": ["Mouth_R"],
    "mouthSmile": ["Mouth_Smile_{S}"], "mouthFrown": ["Mouth_Frown_{S}"],
    "mouthDimple": ["Mouth_Dimple_{S}"], "mouthStretch": ["Mouth_Stretch_{S}"],
    "mouthRollLower": ["Mouth_Roll_In_Lower_{S}"], "mouthRollUpper": ["Mouth_Roll_In_Upper_{S}"],
    "mouthShrugLower": ["Mouth_Shrug_Lower"], "mouthShrugUpper": ["Mouth_Shrug_Upper"],
    "mouthPress": ["Mouth_Press_{S}"], "mouthLowerDown": ["Mouth_Down_Lower_{S}"],
    "mouthUpperUp": ["Mouth_Up_Upper_{S}"],
    "browDown": ["Brow_Drop_{S}"], "browInnerUp": ["Brow_Raise_Inner_{S}"],
    "browOuterUp": ["Brow_Raise_Outer_{S}"], "cheekPuff": ["Cheek_Puff_{S}"],
    "cheekSquint": ["Cheek_Raise_{S}"], "noseSneer": ["Nose_Sneer_{S}"],
    "tongueOut": ["Tongue_Out"],
}
_VRM = {
    "eyeBlink": ["EYE_Close_{S}", "Blink_{S}", "blink{Side}"],
    "jawOpen": ["MTH_A", "aa"], "mouthFunnel": ["MTH_O", "oh"], "mouthPucker": ["MTH_U", "ou"],
}
_METAHUMAN = {
    "mouthSmile": ["mouthCornerPull{S}"], "mouthFrown": ["mouthCornerDepress{S}"],
    "browInnerUp": ["browRaiseIn{S}"], "browOuterUp": ["browRaiseOuter{S}"],
    "browDown": ["browDown{S}"], "eyeWide": ["eyeWiden{S}"], "eyeSquint": ["eyeSquintInner{S}"],
    "cheekSquint": ["eyeCheekRaise{S}"], "noseSneer": ["noseWrinkle{S}"],
    "jawForward": ["jawFwd"], "cheekPuff": ["mouthCheekBlow{S}"],
    "mouthUpperUp": ["mouthUpperLipRaise{S}"], "mouthLowerDown": ["mouthLowerLipDepress{S}"],
    "eyeLookOut": ["eyeLook{SideW}{S}"], "eyeLookIn": ["eyeLook{OtherW}{S}"],
    "mouthStretch": ["mouthStretch{S}"], "mouthDimple": ["mouthDimple{S}"],
    "mouthPress": ["mouthPressU{S}"], "mouthRollUpper": ["mouthUpperLipRollIn{S}"],
    "mouthRollLower": ["mouthLowerLipRollIn{S}"], "mouthFunnel": ["mouthFunnelU{S}"],
    "mouthPucker": ["mouthLipsPurseU{S}"],
}
#: name -> {channel base: [alias templates]}
ALIASES: dict[str, dict[str, list[str]]] = {"cc4": _CC4, "vrm": _VRM, "metahuman": _METAHUMAN}
TABLES = ("arkit",) + tuple(ALIASES)


def _expand(template: str, side: str | None) -> list[str]:
    """Alias template -> concrete names for one channel side (both sides when unsided and
    the template has a side placeholder)."""
    if "{" not in template:
        return [template]
    sides = [side] if side else ["L", "R"]
    out = []
    for s in sides:
        o = "R" if s == "L" else "L"
        w = "Left" if s == "L" else "Right"
        ow = "Right" if s == "L" else "Left"
        out.append(template.format(S=s, O=o, Side=w, SideW=w, OtherW=ow))
    return out


def _alias_targets(channel: str, tables: Iterable[str]) -> list[str]:
    base, side = _side_of(channel)
    out = []
    for t in tables:
        for tmpl in ALIASES.get(t, {}).get(base, []):
            out += ["".join(words(n)) for n in _expand(tmpl, side)]
    return out


def name_mapping(key_names: Iterable[str], tables: Iterable[str] = TABLES,
                 channels: Iterable[str] = ARKIT_NAMES) -> dict[str, list[str]]:
    """Map each ARKit channel to the shape keys of a character that carry it.

    Args:
        key_names: the character's shape-key names (``Basis`` is ignored).
        tables: which conventions to try: ``arkit`` (names, any case and prefix), and the
            alias tables ``cc4``, ``vrm``, ``metahuman`` (tried for channels ``arkit`` left
            unmatched).
        channels: the channels to map (default the 52 ARKit names).
    Returns:
        {channel: [key names]} for every channel that matched at least one key (a list: a
        channel may drive several keys, e.g. split left/right halves). Keys that matched no
        channel are given by :func:`unmapped_keys`.
    """
    tables = tuple(tables)
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise ValueError(f"unknown alias table(s) {unknown}; known: {', '.join(TABLES)}")
    keys = [k for k in dict.fromkeys(key_names) if k and k.lower() not in _IGNORED_KEYS]
    ws = {k: words(k) for k in keys}
    suff = {k: _suffixes(ws[k]) for k in keys}
    whole = {k: "".join(ws[k]) for k in keys}
    out: dict[str, list[str]] = {}
    channels = tuple(channels)
    if "arkit" in tables:
        for ch in channels:
            target = "".join(words(ch))
            hits = [k for k in keys if target in suff[k]]
            if len(hits) > 1:
                # prefer keys that are exactly the channel (no prefix), when some are
                exact = [k for k in hits if whole[k] == target]
                hits = exact or hits
            if not hits and _side_of(ch)[1] is None and ch not in ("jawLeft", "jawRight",
                                                                  "mouthLeft", "mouthRight"):
                hits = [k for k in keys
                        if (target + "left") in suff[k] or (target + "right") in suff[k]]
            if hits:
                out[ch] = hits
    used = {k for ks in out.values() for k in ks}
    aliases = [t for t in tables if t != "arkit"]
    if aliases:
        for ch in channels:
            if ch in out:
                continue
            targets = _alias_targets(ch, aliases)
            hits = [k for k in keys if k not in used and any(t in suff[k] for t in targets)]
            if len(hits) > 1:
                exact = [k for k in hits if whole[k] in targets]
                hits = exact or hits
            if hits:
                out[ch] = hits
                used.update(hits)
    return out


def unmapped_keys(key_names: Iterable[str], mapping: dict[str, list[str]]) -> list[str]:
    """Shape keys that no channel of ``mapping`` drives (``Basis`` excluded)."""
    used = {k for ks in mapping.values() for k in ks}
    return [k for k in key_names if k not in used and k.lower() not in _IGNORED_KEYS]


def check_mapping(mapping: dict[str, list[str]]) -> None:
    """Raise ValueError when one key is driven by several channels (the curves would fight)."""
    seen: dict[str, str] = {}
    for ch, ks in mapping.items():
        for k in ks:
            if k in seen and seen[k] != ch:
                raise ValueError(f"shape key {k!r} is driven by both {seen[k]!r} and {ch!r}; "
                                 f"map it from one channel only")
            seen[k] = ch


# ----------------------------------------------------------------------------- calibration

@dataclass
class ChannelCalibration:
    """Calibration of one channel: ``clip(gain * smooth(zeroed(x)) + offset, min, max)``."""

    gain: float = 1.0
    offset: float = 0.0
    min: float = 0.0
    max: float = 1.0
    smoothing: float = 0.0      # 0 = none .. 1 = strong (zero-phase exponential)

    def validate(self, where: str = "channel") -> None:
        for k in ("gain", "offset", "min", "max", "smoothing"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
                raise ValueError(f"{where}: {k} must be a finite number, got {v!r}")
        if self.min > self.max:
            raise ValueError(f"{where}: min {self.min} is above max {self.max}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"{where}: smoothing must be in [0, 1], got {self.smoothing}")


def smooth(x: np.ndarray, strength: float) -> np.ndarray:
    """Zero-phase smoothing along axis 0: a forward then backward one-pole low-pass filter
    (no lag). ``strength`` 0 returns ``x``; 1 is a time constant of about 10 frames."""
    x = np.asarray(x, np.float64)
    if strength <= 0 or len(x) < 2:
        return x.copy()
    a = float(np.clip(1.0 - strength * 0.9, 0.05, 1.0))     # per-frame blend factor
    from scipy.signal import lfilter

    b, den = [a], [1.0, a - 1.0]
    # zi: start at the first value (no ramp up from zero); x[:1] has lfilter's zi shape
    y, _ = lfilter(b, den, x, axis=0, zi=(1.0 - a) * x[:1])
    y = y[::-1]
    y, _ = lfilter(b, den, y, axis=0, zi=(1.0 - a) * y[:1])
    return y[::-1]


def neutral_values(values: np.ndarray, neutral_frame: int | None) -> np.ndarray:
    """The (C,) values at the neutral frame (zeros when None)."""
    values = np.asarray(values, np.float64)
    if neutral_frame is None:
        return np.zeros(values.shape[1:])
    n = len(values)
    if not -n <= int(neutral_frame) < n:
        raise BadInput(f"neutral frame {neutral_frame} is outside the capture's {n} frames "
                       f"(0..{n - 1})")
    return values[int(neutral_frame)]


def calibrate(values: np.ndarray, names: list[str], calib: dict[str, ChannelCalibration] | None = None,
              neutral_frame: int | None = None, default: ChannelCalibration | None = None) -> np.ndarray:
    """Apply neutral-frame zeroing and per-channel calibration.

    Args:
        values: (N, C) channel curves (e.g. ARKit weights in [0, 1]).
        names: the C channel names (keys of ``calib``).
        calib: {name: ChannelCalibration}; channels not in it use ``default``.
        neutral_frame: index of the frame where the actor rests, zeroed (None: no zeroing).
        default: calibration of channels missing from ``calib`` (default: identity, clamp
            to [0, 1]).
    Returns:
        (N, C) calibrated curves.
    """
    x = np.asarray(values, np.float64)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"values {x.shape} do not match {len(names)} channel names")
    calib = calib or {}
    default = default or ChannelCalibration()
    n0 = neutral_values(x, neutral_frame)
    if neutral_frame is not None:
        span = np.where(n0 < 0.95, 1.0 - n0, 1.0)
        x = (x - n0) / span
    out = np.empty_like(x)
    for j, name in enumerate(names):
        c = calib.get(name, default)
        v = smooth(x[:, j], c.smoothing) if c.smoothing > 0 else x[:, j]
        out[:, j] = np.clip(c.gain * v + c.offset, c.min, c.max)
    return out


# ----------------------------------------------------------------------------- bones

ROLES = ("head", "jaw", "left_eye", "right_eye")
_AXES = ("X", "Y", "Z")


@dataclass
class BoneSettings:
    """How one capture rotation (head, jaw or an eye) drives a bone.

    The capture's axis-angle ``r`` (model axes: +X subject's left, +Y up, +Z out of the face)
    becomes ``clip(gain * A r + radians(offset), radians(min), radians(max))`` component-wise,
    where ``A`` is the signed axis mapping (``axes = ("X", "-Z", "Y")`` puts the capture's X
    on X, its Z negated on Y, its Y on Z). The result is keyed on the bone as for an
    unmapped rotation (converted to the bone's own axes).
    """

    bone: str = ""
    axes: tuple[str, str, str] = ("X", "Y", "Z")
    gain: float = 1.0
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)      # degrees
    min: tuple[float, float, float] = (-180.0, -180.0, -180.0)  # degrees
    max: tuple[float, float, float] = (180.0, 180.0, 180.0)

    def matrix(self) -> np.ndarray:
        """The 3x3 signed permutation ``A`` (output row i takes input axis axes[i])."""
        A = np.zeros((3, 3))
        used = set()
        for i, a in enumerate(self.axes):
            s = str(a).strip().upper()
            sign = -1.0 if s.startswith("-") else 1.0
            s = s.lstrip("+-")
            if s not in _AXES or s in used:
                raise ValueError(f"bone {self.bone!r}: axes must be a permutation of X, Y, Z "
                                 f"with optional '-' signs, got {list(self.axes)}")
            used.add(s)
            A[i, _AXES.index(s)] = sign
        return A

    def validate(self, where: str = "bone") -> None:
        self.matrix()
        if not isinstance(self.gain, (int, float)) or not np.isfinite(self.gain):
            raise ValueError(f"{where}: gain must be a finite number, got {self.gain!r}")
        for k in ("offset", "min", "max"):
            v = getattr(self, k)
            if len(v) != 3 or not all(isinstance(x, (int, float)) and np.isfinite(x) for x in v):
                raise ValueError(f"{where}: {k} must be 3 finite numbers (degrees), got {v!r}")
        if any(a > b for a, b in zip(self.min, self.max)):
            raise ValueError(f"{where}: min {list(self.min)} is above max {list(self.max)}")

    def apply(self, r: np.ndarray) -> np.ndarray:
        """(N, 3) capture axis-angle -> (N, 3) mapped, scaled, offset and limited."""
        r = np.asarray(r, np.float64) @ self.matrix().T * float(self.gain)
        r = r + np.radians(self.offset)
        return np.clip(r, np.radians(self.min), np.radians(self.max))

    def is_identity(self) -> bool:
        return (tuple(self.axes) == ("X", "Y", "Z") and self.gain == 1.0
                and tuple(self.offset) == (0, 0, 0) and all(m <= -180 for m in self.min)
                and all(m >= 180 for m in self.max))


# ----------------------------------------------------------------------------- presets

@dataclass
class Preset:
    """Everything a retarget needs besides the capture and the character."""

    mapping: dict[str, list[str]] = field(default_factory=dict)
    channels: dict[str, ChannelCalibration] = field(default_factory=dict)
    bones: dict[str, BoneSettings] = field(default_factory=dict)
    neutral_frame: int | None = None
    frame_offset: int = 0
    method: str = "name"        # "name" or "geometry"
    name: str = ""

    def to_dict(self) -> dict:
        return {"format": PRESET_FORMAT, "version": PRESET_VERSION, "name": self.name,
                "method": self.method, "neutral_frame": self.neutral_frame,
                "frame_offset": self.frame_offset,
                "mapping": {k: list(v) for k, v in self.mapping.items()},
                "channels": {k: asdict(v) for k, v in self.channels.items()},
                "bones": {k: {**asdict(v), "axes": list(v.axes), "offset": list(v.offset),
                              "min": list(v.min), "max": list(v.max)}
                          for k, v in self.bones.items()}}


def preset_from_dict(d: dict, where: str = "preset") -> Preset:
    """Validate a preset dictionary (as read from JSON) and build a :class:`Preset`.

    Raises:
        PresetError: naming the field that is wrong.
    """
    def bad(msg):
        raise PresetError(f"{where}: {msg}")

    if not isinstance(d, dict):
        bad(f"expected a JSON object, got {type(d).__name__}")
    if d.get("format") != PRESET_FORMAT:
        bad(f"'format' must be {PRESET_FORMAT!r} (not a retarget preset?), got {d.get('format')!r}")
    v = d.get("version")
    if not isinstance(v, int) or v > PRESET_VERSION or v < 1:
        bad(f"'version' {v!r} is not supported (this add-on reads version {PRESET_VERSION})")
    known = {"format", "version", "name", "method", "neutral_frame", "frame_offset", "mapping",
             "channels", "bones"}
    extra = sorted(set(d) - known)
    if extra:
        bad(f"unknown field(s) {extra}")
    mapping = d.get("mapping", {})
    if not isinstance(mapping, dict):
        bad("'mapping' must be an object {channel: [shape key names]}")
    m: dict[str, list[str]] = {}
    for ch, ks in mapping.items():
        if isinstance(ks, str):
            ks = [ks]
        if not isinstance(ks, list) or not all(isinstance(k, str) and k for k in ks):
            bad(f"mapping[{ch!r}] must be a list of shape key names, got {ks!r}")
        m[str(ch)] = list(ks)
    try:
        check_mapping(m)
    except ValueError as e:
        bad(f"mapping: {e}")
    channels = {}
    cal = d.get("channels", {})
    if not isinstance(cal, dict):
        bad("'channels' must be an object {channel: {gain, offset, min, max, smoothing}}")
    for ch, c in cal.items():
        if not isinstance(c, dict):
            bad(f"channels[{ch!r}] must be an object")
        unknown = sorted(set(c) - {"gain", "offset", "min", "max", "smoothing"})
        if unknown:
            bad(f"channels[{ch!r}]: unknown field(s) {unknown}")
        cc = ChannelCalibration(**c)
        try:
            cc.validate(f"channels[{ch!r}]")
        except ValueError as e:
            bad(str(e))
        channels[str(ch)] = cc
    bones = {}
    bs = d.get("bones", {})
    if not isinstance(bs, dict):
        bad("'bones' must be an object {role: {bone, axes, gain, offset, min, max}}")
    for role, b in bs.items():
        if role not in ROLES:
            bad(f"bones: unknown role {role!r} (roles: {', '.join(ROLES)})")
        if not isinstance(b, dict) or not isinstance(b.get("bone", ""), str):
            bad(f"bones[{role!r}] must be an object with a 'bone' name")
        unknown = sorted(set(b) - {"bone", "axes", "gain", "offset", "min", "max"})
        if unknown:
            bad(f"bones[{role!r}]: unknown field(s) {unknown}")
        kw = {k: tuple(b[k]) if isinstance(b.get(k), list) else b[k] for k in b}
        try:
            s = BoneSettings(**kw)
            s.validate(f"bones[{role!r}]")
        except (ValueError, TypeError) as e:
            bad(str(e))
        bones[role] = s
    nf = d.get("neutral_frame")
    if nf is not None and (not isinstance(nf, int) or isinstance(nf, bool) or nf < 0):
        bad(f"'neutral_frame' must be a frame index >= 0 or null, got {nf!r}")
    fo = d.get("frame_offset", 0)
    if not isinstance(fo, int) or isinstance(fo, bool):
        bad(f"'frame_offset' must be an integer, got {fo!r}")
    method = d.get("method", "name")
    if method not in ("name", "geometry"):
        bad(f"'method' must be 'name' or 'geometry', got {method!r}")
    return Preset(mapping=m, channels=channels, bones=bones, neutral_frame=nf, frame_offset=fo,
                  method=method, name=str(d.get("name", "")))


def save_preset(preset: Preset, path) -> str:
    """Write a preset as JSON (atomically). Returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PresetError(f"folder does not exist: {folder}")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(preset.to_dict(), f, indent=1)
    os.replace(tmp, path)
    return path


def load_preset(path) -> Preset:
    """Read and validate a preset JSON file. Raises PresetError naming the problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PresetError(f"preset not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise PresetError(f"{os.path.basename(path)}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PresetError(f"cannot read {path}: {e}") from None
    return preset_from_dict(d, where=os.path.basename(path))


__all__ = ["words", "name_mapping", "unmapped_keys", "check_mapping", "ALIASES", "TABLES",
           "ChannelCalibration", "calibrate", "smooth", "neutral_values", "BoneSettings",
           "ROLES", "Preset", "PresetError", "preset_from_dict", "save_preset", "load_preset"]
