"""Re-measure the test suite's strength: apply deliberate bugs one at a time, run the tests
that should catch each, report which do (issue 19).

    .venv/bin/python tools/mutate.py                 # every mutation, its mapped test files
    .venv/bin/python tools/mutate.py --only 3        # one mutation (1-based, see --list)
    .venv/bin/python tools/mutate.py --list          # the mutations and their tests
    .venv/bin/python tools/mutate.py --rev HEAD~5    # against an older commit's tests
    .venv/bin/python tools/mutate.py --worktree      # the working tree's files as they are
                                                     # (uncommitted edits and new files included)

Never touches the repository it is run from: the code under test is a copy (``git archive``
of ``--rev``, default HEAD, or the working tree's files that git does not ignore with
``--worktree``)
in a temporary folder, beside a link to ``../shared`` (the tests find research media and
FLAME files there) and links to the ignored folders the tests read (.venv, .cache/demo,
tools/threejs/node_modules). Each mutation is one exact text replacement in one file of
the copy, reverted after its run. Captures go to a temporary EMOCA_BLENDER_CACHE, so a
mutated result never lands in the user's capture cache.

A mutation is *caught* when pytest reports a failing test (exit status 1). Exit status 0
(all passed) is *missed*; 5 (no test collected) or anything else is an error of the run,
never counted as caught. The baseline run (every mapped file, unmutated) comes first: a
test that already fails there cannot be said to catch anything (``--no-baseline`` skips it).
A mutation whose old text is not found in the copy (the code moved on) is reported as
``stale``: update its text here.

The tests run with ``-x -q`` (stop at the first failure): the table names the first test
that failed and its assertion line. ``--all-failures`` drops ``-x`` to list every test
that fails (slower).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str          # relative to the repository root
    old: str           # exact text, must occur exactly once
    new: str
    description: str
    tests: tuple[str, ...]   # test files or node ids, relative to the repository root


TIMING = "tests/capture/test_capture_timing.py"
REFINE = "tests/emotion/test_emotion_refine.py"
BAKE = "tests/operators/test_retarget_bake.py"
FBX = "tests/operators/test_fbx_roundtrip.py"

MUTATIONS: tuple[Mutation, ...] = (
    Mutation("head_rotation_delay_3", "emoca_blender/capture/solve.py",
             'out["head_rotation"][F] = rot\n',
             'out["head_rotation"][F] = np.concatenate([rot[:1].repeat(3, 0), rot[:-3]])\n',
             "head rotation delayed by 3 frames in the capture",
             (TIMING, "tests/capture/test_capture_quality.py::test_filter_lag_on_motion")),
    Mutation("head_rotation_delay_1", "emoca_blender/capture/solve.py",
             'out["head_rotation"][F] = rot\n',
             'out["head_rotation"][F] = np.concatenate([rot[:1], rot[:-1]])\n',
             "head rotation delayed by 1 frame in the capture",
             (TIMING, "tests/capture/test_capture_quality.py::test_filter_lag_on_motion")),
    Mutation("jaw_delay_1", "emoca_blender/capture/solve.py",
             'out["jaw"][F] = jaw_from_arkit(a)\n',
             'out["jaw"][F] = np.concatenate([jaw_from_arkit(a)[:1], jaw_from_arkit(a)[:-1]])\n',
             "jaw bone delayed by 1 frame in the capture",
             (TIMING, "tests/capture/test_capture_quality.py::test_filter_lag_on_motion")),
    Mutation("blinks_delay_1", "emoca_blender/capture/solve.py",
             'out["blinks"][F] = blink\n',
             'out["blinks"][F] = np.concatenate([blink[:1], blink[:-1]])\n',
             "blinks delayed by 1 frame in the capture",
             (TIMING, "tests/capture/test_capture_quality.py::test_filter_lag_on_motion")),
    Mutation("filter_forward_only", "emoca_blender/capture/filters.py",
             "out[a:b] = 0.5 * (fwd + bwd)\n",
             "out[a:b] = fwd\n",
             "temporal filter made forward-only (causal: lags)",
             ("tests/capture/test_filters.py", TIMING)),
    Mutation("refine_result_thrown_away", "emoca_blender/emotion/refine.py",
             "return best_e.numpy(), d0, d1\n",
             "return self.e0.numpy(), d0, d1\n",
             "refinement result thrown away (the capture returned, the bookkeeping kept)",
             (REFINE,)),
    Mutation("refine_no_emotion_term", "emoca_blender/emotion/refine.py",
             "loss = self.feat_dist(e, refresh=True) + self.s.reg * (e ** 2).sum()\n",
             "loss = self.s.reg * (e ** 2).sum()\n",
             "emotion term dropped from the refinement loss",
             (REFINE,)),
    Mutation("neutral_pose_mean", "operators/scene/retarget_bake.py",
             "m = np.median(q, axis=0)\n",
             "m = np.mean(q, axis=0)\n",
             "neutral head pose taken as the mean instead of the median",
             (BAKE, FBX)),
    Mutation("neutral_pose_first_frame", "operators/scene/retarget_bake.py",
             "m = np.median(q, axis=0)\n",
             "m = q[0]\n",
             "neutral head pose taken as the first frame instead of the median",
             (BAKE, FBX)),
    Mutation("camera_offset_kept", "operators/scene/retarget_bake.py",
             "return m / n if n > 1e-9 else np.array([1.0, 0.0, 0.0, 0.0])\n",
             "return np.array([1.0, 0.0, 0.0, 0.0])\n",
             "camera offset not removed (the neutral head pose is the identity)",
             (BAKE, FBX)),
    Mutation("detail_inputs_swapped", "emoca_blender/models/emoca_net.py",
             "return self.D_detail(torch.cat([jaw, exp, detail], 1))\n",
             "return self.D_detail(torch.cat([exp, jaw, detail], 1))\n",
             "detail decoder inputs swapped (expression before jaw)",
             ("tests/models/test_emoca_net.py", "tests/models/test_emoca_checkpoint.py")),
    Mutation("bone_quat_no_transpose", "operators/scene/rig_build.py",
             "r_local = np.asarray(r_model, np.float64) @ (B.T @ C).T\n",
             "r_local = np.asarray(r_model, np.float64) @ (B.T @ C)\n",
             "bone quaternion missing a transpose (model to bone axes)",
             (FBX,)),
)

# ignored folders the tests read, linked into the copy (relative to the repository root)
LINKED = (".venv", ".cache/demo", "tools/threejs/node_modules")


def make_copy(dest: Path, rev: str | None) -> Path:
    """The repository's tracked files at ``rev`` (None: the working tree) under
    ``dest/<name>``, with ``dest/shared`` linking to the real ``../shared``."""
    repo = dest / ROOT.name
    repo.mkdir(parents=True)
    if rev is None:
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                "--exclude-standard"], cwd=ROOT, check=True,
                               capture_output=True).stdout.decode().split("\0")
        for f in filter(None, files):
            src = ROOT / f
            if src.is_file():
                (repo / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, repo / f)
    else:
        arch = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, check=True,
                              capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(repo)], input=arch, check=True)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (dest / "shared").symlink_to(shared)
    for rel in LINKED:
        if (ROOT / rel).exists() and not (repo / rel).exists():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).symlink_to(ROOT / rel)
    return repo


def _failures(out: str) -> list[str]:
    """'test id: first assertion line' of each failing test in pytest -q output."""
    names = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    firsts: dict[str, str] = {}
    # the short assertion each failure section shows first ("E   ...")
    parts = re.split(r"^_{3,} (.+?) _{3,}$", out, flags=re.M)
    for title, body in zip(parts[1::2], parts[2::2]):
        m = re.search(r"^E\s+(.+)$", body, re.M)
        if m:
            firsts[title.strip()] = m.group(1).strip()
    res = []
    for n in names:
        short = n.split("::", 1)[-1]
        line = next((v for k, v in firsts.items() if k == short or short.endswith(k)
                     or k.endswith(short)), "")
        res.append(f"{n.split('/')[-1]}" + (f": {line[:110]}" if line else ""))
    return res


def run_tests(repo: Path, tests, all_failures: bool, timeout: float, env) -> tuple[int, str, float]:
    present = [t for t in tests if (repo / t.split("::")[0]).is_file()]
    if not present:
        return 5, "no test file present", 0.0
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short",
           *([] if all_failures else ["-x"]), *present]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout,
                           env=env)
        rc, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, f"timed out after {timeout:.0f} s\n{(e.stdout or b'')[-2000:]!r}"
    return rc, out, time.perf_counter() - t0


def apply(repo: Path, m: Mutation) -> str | None:
    """Apply ``m`` in the copy; the original text, or None when ``m.old`` is not there
    exactly once (stale)."""
    p = repo / m.file
    if not p.is_file():
        return None
    text = p.read_text()
    if text.count(m.old) != 1:
        return None
    p.write_text(text.replace(m.old, m.new))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", type=int, action="append", metavar="N",
                    help="run mutation N only (1-based; repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--rev", default="HEAD", help="commit whose files are mutated (HEAD)")
    src.add_argument("--worktree", action="store_true",
                     help="the working tree's files (tracked, and untracked ones git does not "
                          "ignore) instead of a commit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument("--all-failures", action="store_true", help="no -x: every failing test")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--log", type=Path, help="write each run's pytest output here")
    args = ap.parse_args(argv)

    chosen = list(enumerate(MUTATIONS, 1))
    if args.only:
        bad = [n for n in args.only if not 1 <= n <= len(MUTATIONS)]
        if bad:
            ap.error(f"--only takes 1..{len(MUTATIONS)}, got {bad}")
        chosen = [(i, m) for i, m in chosen if i in args.only]
    if args.list:
        for i, m in chosen:
            print(f"{i:2d}  {m.name:28s} {m.file}: {m.description}\n    tests: {', '.join(m.tests)}")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="emoca_mutate."))
    log = open(args.log, "w") if args.log else None
    try:
        repo = make_copy(tmp, None if args.worktree else args.rev)
        env = dict(os.environ)
        env["EMOCA_BLENDER_CACHE"] = str(tmp / "capture_cache")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        where = "the working tree" if args.worktree else args.rev
        print(f"mutating a copy of {where} in {repo}", flush=True)
        rows = []
        base_ok = True
        if not args.no_baseline:
            union = list(dict.fromkeys(t for _, m in chosen for t in m.tests))
            rc, out, dt = run_tests(repo, union, True, args.timeout * 2, env)
            if log:
                log.write(f"==== baseline (rc {rc})\n{out}\n")
            base_ok = rc == 0
            fails = _failures(out)
            print(f"baseline: {'passed' if base_ok else f'rc {rc}'} in {dt:.0f} s"
                  + ("" if base_ok else ": " + "; ".join(fails[:5]) or out[-500:]), flush=True)
        for i, m in chosen:
            original = apply(repo, m)
            if original is None:
                rows.append((i, m, "stale", "old text not found exactly once in " + m.file, 0.0))
                print(f"{i}: {m.name}: stale", flush=True)
                continue
            try:
                rc, out, dt = run_tests(repo, m.tests, args.all_failures, args.timeout, env)
            finally:
                (repo / m.file).write_text(original)
            if log:
                log.write(f"==== {i} {m.name} (rc {rc})\n{out}\n")
            fails = _failures(out)
            verdict = {0: "MISSED", 1: "caught"}.get(rc, f"error rc {rc}")
            what = "<br>".join(fails) if fails else ("" if rc == 0 else out.strip()[-200:])
            rows.append((i, m, verdict, what, dt))
            print(f"{i}: {m.name}: {verdict} ({dt:.0f} s) {fails[:1]}", flush=True)
        print()
        print("| # | deliberate bug | file | tests run | result | failing test: first assertion | s |")
        print("|---|---|---|---|---|---|---|")
        for i, m, verdict, what, dt in rows:
            tests = ", ".join(t.replace("tests/", "") for t in m.tests)
            what = what.replace("|", "\\|").replace("\n", " ")
            print(f"| {i} | {m.description} | {m.file} | {tests} | {verdict} | {what} | {dt:.0f} |")
        caught = sum(r[2] == "caught" for r in rows)
        print(f"\n{caught} of {len(rows)} caught"
              + ("" if base_ok else " (the baseline failed: read the table with care)"))
        return 0 if caught == len(rows) and base_ok else 1
    finally:
        if log:
            log.close()
        if args.keep:
            print(f"copy kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
