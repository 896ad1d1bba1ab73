// An independent client for the exported files: three.js's own FBXLoader / GLTFLoader parse
// an .fbx, .glb or .gltf in plain node (no browser, no textures) and this prints what a
// three.js app would get, as JSON on stdout:
//   {"three": REVISION, "format": "fbx"|"gltf",
//    "meshes": [{"name", "morph_targets": [names in index order], "rest_weights": [...]}],
//    "bones": [{"name", "scale": [x, y, z], "quaternion": [x, y, z, w]}]   (as loaded: rest),
//    "roots": [{"name", "position", "scale"}],
//    "clips": [{"name", "duration", "tracks": [{"name", "times", "values"}]}]}
// Usage: node dump_animation.mjs FILE
import { readFileSync } from "node:fs";
import * as THREE from "three";
import { FBXLoader } from "three/examples/jsm/loaders/FBXLoader.js";
import { GLTFLoader } from "three/examples/jsm/loaders/GLTFLoader.js";

const file = process.argv[2];
if (!file) {
  console.error("usage: node dump_animation.mjs FILE.fbx|FILE.glb|FILE.gltf");
  process.exit(2);
}
const buf = readFileSync(file);
const data = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
const arr = (a) => Array.from(a, Number);

async function load() {
  if (/\.fbx$/i.test(file)) {
    const root = new FBXLoader().parse(data, "");
    return { format: "fbx", root, clips: root.animations };
  }
  const gltf = await new Promise((resolve, reject) =>
    new GLTFLoader().parse(data, "", resolve, reject));
  return { format: "gltf", root: gltf.scene, clips: gltf.animations };
}

const { format, root, clips } = await load();
const meshes = [], bones = [];
root.traverse((o) => {
  if (o.isBone) {
    bones.push({ name: o.name, scale: o.scale.toArray(), quaternion: o.quaternion.toArray() });
  }
  if (o.isMesh && o.morphTargetDictionary) {
    const names = [];
    for (const [n, i] of Object.entries(o.morphTargetDictionary)) names[i] = n;
    meshes.push({ name: o.name, parent: o.parent ? o.parent.name : null, morph_targets: names,
                  rest_weights: arr(o.morphTargetInfluences || []) });
  }
});
const out = {
  three: THREE.REVISION, format, meshes, bones,
  roots: root.children.map((o) => ({ name: o.name, position: o.position.toArray(),
                                     scale: o.scale.toArray() })),
  clips: clips.map((c) => ({
    name: c.name, duration: c.duration,
    tracks: c.tracks.map((t) => ({ name: t.name, times: arr(t.times), values: arr(t.values) })),
  })),
};
process.stdout.write(JSON.stringify(out));
