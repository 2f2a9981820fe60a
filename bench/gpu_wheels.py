"""Which wheels the GPU machine needs: the project's imports, pinned by our locks, minus what
its image already holds at the same version and minus torch's CUDA stack (the image's own).

The GPU machine's image has Python 3.12, CUDA torch 2.11,
transformers 5.x, huggingface_hub 1.x and a CPU onnxruntime, and no registry. Our code is
tested with requirements/dev.lock (transformers 4.57.6, huggingface_hub 0.36.2, ...), and on a
GPU with onnxruntime-gpu in place of onnxruntime. So the list is the dependency closure of what
the GPU check imports (pyproject.toml's base, train, loadtest, report and gpu extras and the
test tools below), each name at the lock's version, walked through the wheels' own metadata
evaluated for CPython 3.12 on Linux x86_64.

Why a resolver of our own: pip's would pull torch (accelerate, peft and optimum require it),
that is gigabytes of CUDA wheels the image already has, and it cannot be told "this package
is already there at this version". The walk here is a breadth-first closure over pinned
versions; nothing is solved, since the lock already chose every version.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# CPython 3.12.3 on Linux x86_64, as the image's /opt/torch/.venv/bin/python3 reports.
TARGET_ENV = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.3",
    "python_version": "3.12",
    "sys_platform": "linux",
}

# The image's own CUDA stack: carrying torch would replace a 2.11+cu130 build that works there.
EXCLUDED_PATTERNS = ("torch", "triton", "nvidia-*", "cuda-*")
# Named like that stack but not part of it: NVML's Python binding, which bentoml requires.
NOT_EXCLUDED = ("nvidia-ml-py",)
# Lint, packaging and fuzzing tools: nothing the GPU check runs imports them.
NOT_RUN_THERE = ("uv", "ruff", "schemathesis", "hypothesis")

# Versions the image holds, as read there (its pip list). A package is left out only
# when the image has exactly the lock's version; an unknown version is carried, since only the
# lock's versions are tested. Add a row here when `pip show` there tells more.
IMAGE_VERSIONS = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "onnx": "1.23.1",
    "onnx-ir": "1.0.0",
    "onnxruntime": "1.30.0",
    "onnxscript": "0.7.2",
    "safetensors": "0.8.0",
    "sentencepiece": "0.2.2",
    "tokenizers": "0.23.2",
    "transformers": "5.17.0",
}

# From pyproject.toml: what the service, export, training, load tests and reports import.
EXTRAS = ("train", "loadtest", "report", "gpu")
# From the dev extra, only what the GPU tests import (pytest, httpx for the service's test
# client). fastapi and uvicorn serve bench/naive_server.py, which the check does not run.
DEV_NEEDED = ("pytest", "httpx")

CPU_RUNTIME, GPU_RUNTIME = "onnxruntime", "onnxruntime-gpu"


class WheelListError(ValueError):
    """The wheel list breaks one of its rules; the message says which and what to change."""


@dataclasses.dataclass(frozen=True)
class Pin:
    name: str  # canonical (PEP 503)
    version: str


@dataclasses.dataclass(frozen=True)
class Resolution:
    carry: list[Pin]  # to download and install there, in walk order
    in_image: list[Pin]  # needed, but the image has the same version
    excluded: list[str]  # needed, left to the image (torch's stack)
    required_by: dict[str, str]  # name -> the first requirement that brought it in


def is_excluded(name: str) -> bool:
    name = canonicalize_name(name)
    return name not in NOT_EXCLUDED and any(
        name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1]))
        for pattern in EXCLUDED_PATTERNS
    )


_PIN_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def read_lock(path: Path) -> tuple[dict[str, str], dict[str, set[str]]]:
    """{name: version} and {name: {sha256, ...}} of a hashed requirements file (uv's output or
    requirements-models.txt): a pin line, then its `--hash` lines."""
    versions: dict[str, str] = {}
    hashes: dict[str, set[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _PIN_LINE.match(stripped)
        if match:
            current = canonicalize_name(match.group(1))
            versions[current] = match.group(2)
            hashes.setdefault(current, set())
        if current is not None:
            hashes[current].update(_HASH.findall(stripped))
    return versions, hashes


def merge_locks(locks: Iterable[tuple[Path, dict[str, str]]]) -> dict[str, str]:
    """One version per name across locks, or an error naming both."""
    merged: dict[str, str] = {}
    seen_in: dict[str, Path] = {}
    for path, versions in locks:
        for name, version in versions.items():
            if name in merged and merged[name] != version:
                raise WheelListError(
                    f"{name} is {merged[name]} in {seen_in[name]} but {version} in {path}: "
                    "regenerate the locks (make locks) so they agree"
                )
            merged.setdefault(name, version)
            seen_in.setdefault(name, path)
    return merged


def roots_from_pyproject(pyproject: Path) -> list[Requirement]:
    """The project's requirements for the GPU check, onnxruntime swapped for onnxruntime-gpu."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    dev = [Requirement(line) for line in project["optional-dependencies"]["dev"]]
    lines += [str(req) for req in dev if canonicalize_name(req.name) in DEV_NEEDED]
    return [Requirement(line) for line in lines]


def applies(req: Requirement, extras: frozenset[str]) -> bool:
    """Whether a requirement holds on the target for a package installed with `extras`."""
    if req.marker is None:
        return True
    marker: Marker = req.marker
    return any(marker.evaluate({**TARGET_ENV, "extra": extra}) for extra in (extras or {""}))


def swap_runtime(name: str) -> str:
    # onnxruntime-gpu replaces onnxruntime: both install the `onnxruntime` package and
    # overwrite each other's files, so a requirement of either is met by the GPU build.
    return GPU_RUNTIME if name == CPU_RUNTIME else name


RequiresOf = Callable[[list[Pin]], dict[str, list[str]]]


def resolve(
    roots: list[Requirement],
    lock: dict[str, str],
    requires_of: RequiresOf,
    image: dict[str, str] | None = None,
) -> Resolution:
    """The closure of `roots` at the lock's versions, breadth first.

    `requires_of(pins)` returns each pin's Requires-Dist lines (a whole level at a time, so the
    caller can download a level in one pip call). torch's stack is neither carried nor walked:
    the image's torch brings its own. A package the image has at the lock's version is walked
    (its dependencies must still be the lock's) but not carried."""
    image = IMAGE_VERSIONS if image is None else image
    wanted: dict[str, frozenset[str]] = {}
    order: list[str] = []
    excluded: set[str] = set()
    required_by: dict[str, str] = {}

    def want(req: Requirement, extras: frozenset[str], by: str) -> str | None:
        if not applies(req, extras):
            return None
        name = swap_runtime(canonicalize_name(req.name))
        if is_excluded(name):
            excluded.add(name)
            return None
        if name not in lock:
            raise WheelListError(
                f"{name} is needed (required as {req}) but no lock pins it: add it to "
                "pyproject.toml and run make locks"
            )
        new_extras = frozenset(req.extras)
        if name not in wanted:
            wanted[name] = new_extras
            order.append(name)
            required_by[name] = by
            return name
        if not new_extras <= wanted[name]:  # an extra asked for later: walk the package again
            wanted[name] |= new_extras
            return name
        return None

    level = [n for n in (want(req, frozenset(), "pyproject.toml") for req in roots) if n]
    while level:
        pins = [Pin(name, lock[name]) for name in level]
        requires = requires_of(pins)
        next_level: list[str] = []
        for name in level:
            for line in requires.get(name, []):
                added = want(Requirement(line), wanted[name], name)
                if added and added not in next_level:
                    next_level.append(added)
        level = next_level

    carry = [Pin(n, lock[n]) for n in order if image.get(n) != lock[n]]
    in_image = [Pin(n, lock[n]) for n in order if image.get(n) == lock[n]]
    return Resolution(carry, in_image, sorted(excluded), required_by)


_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def parse_wheel_filename(filename: str) -> Pin:
    match = _WHEEL_NAME.match(filename)
    if not match:
        raise WheelListError(f"{filename} is not a wheel's file name (name-version-tags.whl)")
    return Pin(canonicalize_name(match.group("name")), match.group("version"))


def check_wheel_list(filenames: Iterable[str], lock: dict[str, str]) -> list[Pin]:
    """The rules every bundle keeps, checked on the wheel files themselves: one version of each
    package, never onnxruntime beside onnxruntime-gpu, nothing of torch's stack, and every
    package at the lock's version. Returns the pins; raises WheelListError naming the
    offending wheels."""
    pins: dict[str, list[tuple[str, str]]] = {}
    for filename in filenames:
        pin = parse_wheel_filename(filename)
        pins.setdefault(pin.name, []).append((pin.version, filename))
    problems: list[str] = []
    for name, found in sorted(pins.items()):
        if len(found) > 1:
            problems.append(
                f"{name} is there {len(found)} times ({', '.join(f for _, f in found)}): "
                "keep one, two stop the whole install"
            )
        if is_excluded(name):
            problems.append(f"{name} must not travel: the image's own CUDA build stays in use")
        if name in NOT_RUN_THERE:
            problems.append(f"{name} is not run by the GPU check: leave it out")
        if name not in lock:
            problems.append(f"{name} is pinned by no lock: the GPU machine would run untested code")
        else:
            problems += [
                f"{name} {version} in {filename}, but the lock pins {lock[name]}"
                for version, filename in found
                if Version(version) != Version(lock[name])
            ]
    if CPU_RUNTIME in pins and GPU_RUNTIME in pins:
        problems.append(
            "onnxruntime and onnxruntime-gpu together: they overwrite each other's files; "
            "keep only onnxruntime-gpu"
        )
    if problems:
        raise WheelListError("; ".join(problems))
    return [Pin(name, found[0][0]) for name, found in pins.items()]
