"""The bundle's parts: wheels packed into one tar, cut into numbered parts that each fit one call
to the GPU machine, a manifest of both, and, there, the check of each part and the extraction
of every wheel whose bytes have all arrived.

Standard library only: this runs on the GPU machine under the image's python3, before any of
our packages are installed.

Why parts of one stream and not one tar per call: a call carries at most 64 MiB with the working
tree, and onnxruntime-gpu's wheel alone is four times that. Cutting one stream fills every call
to the brim (fewest calls), and the manifest's byte offsets let the machine install each wheel as
soon as its last byte arrives: joined, the parts are a plain tar (`cat part-* | tar -x`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST_NAME = "MANIFEST.json"
FORMAT = 1
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def part_name(index: int) -> str:
    return f"part-{index:02d}"


class _PartWriter:
    """A write-only stream that starts a new part file every `part_bytes` bytes."""

    def __init__(self, out_dir: Path, part_bytes: int) -> None:
        self.out_dir, self.part_bytes = out_dir, part_bytes
        self.paths: list[Path] = []
        self._file: BinaryIO | None = None
        self._left = 0
        self.position = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._left == 0:
                self._next_part()
            n = min(self._left, len(view))
            assert self._file is not None
            self._file.write(view[:n])
            view, self._left, self.position = view[n:], self._left - n, self.position + n
        return len(data)

    def _next_part(self) -> None:
        if self._file is not None:
            self._file.close()
        path = self.out_dir / part_name(len(self.paths) + 1)
        self.paths.append(path)
        self._file = path.open("wb")
        self._left = self.part_bytes

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclasses.dataclass(frozen=True)
class Entry:
    """A wheel to pack: its file and the group it belongs to (packages, onnxruntime, models)."""

    path: Path
    group: str
    name: str
    version: str


def pack(
    entries: list[Entry], out_dir: Path, part_bytes: int, python_version: str
) -> dict[str, Any]:
    """Write the parts of one uncompressed tar of `entries`, in their order, into `out_dir`;
    returns the manifest (not yet written). `python_version` ("3.12") is the CPython the wheels
    are for: the installer refuses another. Wheels are zip files already: compressing them
    again would cost minutes and save little."""
    if part_bytes < 1 << 20:
        raise ValueError(f"part size {part_bytes} B is under 1 MiB: give --part-mib 1 or more")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("part-*"):
        stale.unlink()
    writer = _PartWriter(out_dir, part_bytes)
    wheels: list[dict[str, Any]] = []
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for entry in entries:
            info = tar.gettarinfo(str(entry.path), arcname=f"wheels/{entry.path.name}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0  # the same wheels give the same parts
            header = info.tobuf(tar.format, tar.encoding, tar.errors)
            offset = tar.offset + len(header)  # the stream buffers: the writer's count lags
            with entry.path.open("rb") as f:
                tar.addfile(info, f)
            wheels.append(
                {
                    "file": entry.path.name,
                    "name": entry.name,
                    "version": entry.version,
                    "group": entry.group,
                    "size": info.size,
                    "sha256": sha256_of(entry.path),
                    "offset": offset,
                }
            )
    writer.close()
    parts = [
        {"file": p.name, "size": p.stat().st_size, "sha256": sha256_of(p)} for p in writer.paths
    ]
    for wheel in wheels:
        first = wheel["offset"] // part_bytes
        last = (wheel["offset"] + max(wheel["size"], 1) - 1) // part_bytes
        wheel["parts"] = [first + 1, last + 1]
    for index, part in enumerate(parts, start=1):
        part["call"] = index
        part["completes"] = [w["file"] for w in wheels if w["parts"][1] == index]
    return {
        "format": FORMAT,
        "python_version": python_version,
        "part_bytes": part_bytes,
        "total_bytes": sum(p["size"] for p in parts),
        "wheels_bytes": sum(w["size"] for w in wheels),
        "calls": len(parts),
        "wheels": wheels,
        "parts": parts,
    }


def write_manifest(manifest: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return path


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: send it with every part ({bundle.name}/{MANIFEST_NAME})"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')}, this code reads {FORMAT}")
    return manifest


@dataclasses.dataclass
class PartsState:
    good: list[int]  # part numbers present with the right size and sha256
    missing: list[int]
    damaged: dict[int, str]  # part number -> what is wrong

    @property
    def prefix_parts(self) -> int:
        """How many parts from the first on are all good: the bytes of the stream we have."""
        n = 0
        while n + 1 in self.good:
            n += 1
        return n


def check_parts(bundle: Path, manifest: dict[str, Any]) -> PartsState:
    state = PartsState([], [], {})
    for index, part in enumerate(manifest["parts"], start=1):
        path = bundle / part["file"]
        if not path.is_file():
            state.missing.append(index)
        elif (size := path.stat().st_size) != part["size"]:
            state.damaged[index] = f"{size} B instead of {part['size']} B"
        elif sha256_of(path) != part["sha256"]:
            state.damaged[index] = "its sha256 differs from the manifest's"
        else:
            state.good.append(index)
    return state


def describe(state: PartsState, manifest: dict[str, Any], bundle: Path) -> list[str]:
    """One line per damaged part and per part missing before the last that arrived, naming the
    call that carries it; then one line for the next call, if any is left."""
    calls = manifest["calls"]
    lines = [
        f"{part_name(i)} is damaged ({why}): send {bundle.name}/{part_name(i)} again "
        f"(transfer {i} of {calls})"
        for i, why in sorted(state.damaged.items())
    ]
    arrived = max([*state.good, *state.damaged], default=0)
    lines += [
        f"{part_name(i)} has not arrived: send {bundle.name}/{part_name(i)} again "
        f"(transfer {i} of {calls})"
        for i in state.missing
        if i < arrived
    ]
    if later := [i for i in state.missing if i > arrived]:
        lines.append(
            f"next: transfer {later[0]} of {calls} (send {bundle.name}/{part_name(later[0])})"
        )
    return lines


def _read_range(bundle: Path, manifest: dict[str, Any], offset: int, size: int) -> Iterator[bytes]:
    """The stream's bytes [offset, offset + size), read across the part files."""
    part_bytes = manifest["part_bytes"]
    while size > 0:
        index, local = divmod(offset, part_bytes)
        n = min(size, part_bytes - local)
        with (bundle / manifest["parts"][index]["file"]).open("rb") as f:
            f.seek(local)
            left = n
            while left:
                block = f.read(min(left, _CHUNK))
                if not block:
                    raise ValueError(f"{manifest['parts'][index]['file']} ends early")
                left -= len(block)
                yield block
        offset, size = offset + n, size - n


def extract_ready(
    bundle: Path, manifest: dict[str, Any], state: PartsState, dest: Path, skip: set[str]
) -> list[Path]:
    """Write every wheel whose parts are all good and whose file name is not in `skip` into
    `dest`, each checked against the manifest's sha256; returns the new wheel files."""
    dest.mkdir(parents=True, exist_ok=True)
    good = set(state.good)
    written = []
    for wheel in manifest["wheels"]:
        first, last = wheel["parts"]
        if wheel["file"] in skip or not set(range(first, last + 1)) <= good:
            continue
        target = dest / wheel["file"]
        digest = hashlib.sha256()
        with target.open("wb") as f:
            for block in _read_range(bundle, manifest, wheel["offset"], wheel["size"]):
                digest.update(block)
                f.write(block)
        if digest.hexdigest() != wheel["sha256"]:
            target.unlink()
            raise ValueError(f"{wheel['file']} read from the parts does not match its sha256")
        written.append(target)
    return written


def copy_parts_for_call(bundle: Path, index: int, dest: Path) -> None:
    """Copy one call's files (the manifest and its part) into `dest`, e.g. to test a call."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(bundle / MANIFEST_NAME, dest / MANIFEST_NAME)
    shutil.copy2(bundle / part_name(index), dest / part_name(index))
