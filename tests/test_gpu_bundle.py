"""The GPU bundle: its wheel list keeps the rules (one version each, onnxruntime-gpu never beside
onnxruntime, no torch, the lock's versions), its parts join into the wheels byte for byte, a
missing or damaged part is named with the call that carries it, and gpu_install.sh installs
each wheel once, across calls, and refuses a bad part. Offline: small fake wheels in tmp_path."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from bench import bundle_parts, gpu_bundle, gpu_wheels
from bench.gpu_wheels import Pin, WheelListError

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "bench" / "gpu_install.sh"
MIB = 1 << 20
PYTHON_VERSION = "{}.{}".format(*sys.version_info[:2])


def make_wheel(directory: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid pure-Python wheel, as pip installs it."""
    dist_info = f"{name}-{version}.dist-info"
    contents = {
        **files,
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    contents[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for member, data in contents.items():
            zf.writestr(member, data)
    return path


@pytest.fixture()
def fake_bundle(tmp_path: Path) -> tuple[Path, dict]:
    """Three wheels over four 1 MiB parts. `nsdemo` is a namespace package that two wheels
    share, and they are completed by different parts, i.e. installed in different calls."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    blob = os.urandom(int(1.5 * MIB))  # random: the wheel is as large as its data
    entries = [
        bundle_parts.Entry(
            make_wheel(wheels, "alpha", "1.0", {"nsdemo/alpha/__init__.py": b"A = 1\n"}),
            "packages", "alpha", "1.0",
        ),
        bundle_parts.Entry(
            make_wheel(wheels, "beta", "2.0", {"nsdemo/beta/__init__.py": b"B = 2\n",
                                               "nsdemo/beta/blob.bin": blob}),
            "packages", "beta", "2.0",
        ),
        bundle_parts.Entry(
            make_wheel(wheels, "gamma", "3.0", {"gamma/__init__.py": b"G = 3\n",
                                                "gamma/blob.bin": blob[::-1]}),
            "models", "gamma", "3.0",
        ),
    ]  # fmt: skip
    out = tmp_path / "gpu_bundle"
    manifest = bundle_parts.pack(entries, out, MIB, PYTHON_VERSION)
    bundle_parts.write_manifest(manifest, out)
    return out, manifest


def test_parts_join_into_a_tar_of_the_wheels_and_the_manifest_says_so(fake_bundle, tmp_path):
    out, manifest = fake_bundle
    parts = sorted(out.glob("part-*"))
    assert [p.name for p in parts] == ["part-01", "part-02", "part-03", "part-04"]
    assert manifest["calls"] == 4 and all(p.stat().st_size <= MIB for p in parts)
    for part, listed in zip(parts, manifest["parts"], strict=True):
        assert listed["size"] == part.stat().st_size
        assert listed["sha256"] == hashlib.sha256(part.read_bytes()).hexdigest()
    joined = b"".join(p.read_bytes() for p in parts)
    assert manifest["total_bytes"] == len(joined)
    with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
        for wheel in manifest["wheels"]:
            data = tar.extractfile(f"wheels/{wheel['file']}").read()
            original = (tmp_path / "wheels" / wheel["file"]).read_bytes()
            assert data == original and len(data) == wheel["size"]
            assert hashlib.sha256(data).hexdigest() == wheel["sha256"]
    # Where each wheel ends is where it can be installed: alpha in call 1, beta and gamma later.
    ends = {w["name"]: w["parts"][1] for w in manifest["wheels"]}
    assert ends == {"alpha": 1, "beta": 2, "gamma": 4}
    assert manifest["parts"][0]["completes"] == [manifest["wheels"][0]["file"]]


def test_wheels_are_extracted_once_their_parts_are_good_and_bad_parts_are_named(
    fake_bundle, tmp_path
):
    out, manifest = fake_bundle
    (out / "part-04").unlink()
    state = bundle_parts.check_parts(out, manifest)
    assert state.good == [1, 2, 3] and state.missing == [4] and not state.damaged
    lines = bundle_parts.describe(state, manifest, out)
    assert lines == ["next: transfer 4 of 4 (send gpu_bundle/part-04)"]
    new = bundle_parts.extract_ready(out, manifest, state, tmp_path / "new", skip=set())
    assert [p.name for p in new] == [w["file"] for w in manifest["wheels"][:2]]
    assert new[1].read_bytes() == (tmp_path / "wheels" / new[1].name).read_bytes()
    again = bundle_parts.extract_ready(
        out, manifest, state, tmp_path / "new2", {p.name for p in new}
    )
    assert again == []

    damaged = bytearray((out / "part-02").read_bytes())
    damaged[100] ^= 0xFF
    (out / "part-02").write_bytes(bytes(damaged))
    (out / "part-03").unlink()
    state = bundle_parts.check_parts(out, manifest)
    assert state.damaged == {2: "its sha256 differs from the manifest's"}
    (out / "part-04").write_bytes(b"short")
    state = bundle_parts.check_parts(out, manifest)
    lines = bundle_parts.describe(state, manifest, out)
    assert (
        "part-02 is damaged (its sha256 differs from the manifest's): "
        "send gpu_bundle/part-02 again (transfer 2 of 4)" in lines[0]
    )
    assert lines[1].startswith("part-04 is damaged (5 B instead of")
    assert lines[2] == "part-03 has not arrived: send gpu_bundle/part-03 again (transfer 3 of 4)"


def _install(bundle: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        "bash", str(INSTALL), "--bundle", str(bundle), "--site", str(tmp_path / "site"),
        "--work", str(tmp_path / "work"), "--python", sys.executable, *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def _carry(bundle: Path, device: Path, call: int) -> None:
    """What one call brings: the manifest and its part (earlier parts stay there)."""
    device.mkdir(exist_ok=True)
    for name in (bundle_parts.MANIFEST_NAME, bundle_parts.part_name(call)):
        (device / name).write_bytes((bundle / name).read_bytes())


def test_install_across_calls_installs_each_wheel_once_and_prints_the_path(fake_bundle, tmp_path):
    out, _ = fake_bundle
    device = tmp_path / "device" / "gpu_bundle"
    device.parent.mkdir()
    site = tmp_path / "site"
    _carry(out, device, 1)
    first = _install(device, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "1 wheels new" in first.stderr and "next: transfer 2 of 4" in first.stderr
    assert (site / "nsdemo" / "alpha" / "__init__.py").is_file()
    assert f"export PYTHONPATH={REPO}:{site}" in first.stdout
    for call in (2, 3, 4):
        _carry(out, device, call)
        done = _install(device, tmp_path)
        assert done.returncode == 0, done.stderr
    # beta arrived in a later call than alpha: the shared namespace folder holds both.
    assert (site / "nsdemo" / "alpha" / "__init__.py").is_file()
    assert (site / "nsdemo" / "beta" / "blob.bin").stat().st_size == int(1.5 * MIB)
    names = {d.name for d in site.glob("*.dist-info")}
    assert names == {"alpha-1.0.dist-info", "beta-2.0.dist-info", "gamma-3.0.dist-info"}
    rerun = _install(device, tmp_path)
    assert "0 wheels new, 3 installed before, 0 still to come" in rerun.stderr
    code = (
        "import nsdemo.alpha, nsdemo.beta, gamma; print(nsdemo.alpha.A + nsdemo.beta.B + gamma.G)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert shown.stdout.strip() == "6", shown.stderr


def test_install_refuses_a_damaged_part_and_installs_nothing(fake_bundle, tmp_path):
    out, _ = fake_bundle
    device = tmp_path / "device" / "gpu_bundle"
    device.parent.mkdir()
    _carry(out, device, 1)
    _carry(out, device, 2)
    (device / "part-02").write_bytes(b"\0" * (device / "part-02").stat().st_size)
    done = _install(device, tmp_path)
    assert done.returncode == 3
    assert (
        "part-02 is damaged (its sha256 differs from the manifest's): "
        "send gpu_bundle/part-02 again (transfer 2 of 4)" in done.stderr
    )
    assert "nothing installed" in done.stderr and done.stdout == ""
    assert not any((tmp_path / "site").iterdir())

    (device / bundle_parts.MANIFEST_NAME).unlink()
    missing = _install(device, tmp_path, "--no-pip")
    assert missing.returncode == 2 and "MANIFEST.json is missing: send it" in missing.stderr


def test_install_refuses_wheels_for_another_python(fake_bundle, tmp_path):
    out, manifest = fake_bundle
    manifest["python_version"] = "3.99"
    bundle_parts.write_manifest(manifest, out)
    done = _install(out, tmp_path)
    assert done.returncode == 2
    assert f"is Python {PYTHON_VERSION}; the bundle's wheels are for 3.99" in done.stderr


def test_the_wheel_list_rules_name_what_breaks_them():
    lock = {"numpy": "2.4.6", "onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1",
            "torch": "2.13.0", "ruff": "0.17.6", "pytest": "9.2.0"}  # fmt: skip
    good = ["numpy-2.4.6-cp312-cp312-manylinux_2_28_x86_64.whl",
            "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"]  # fmt: skip
    assert {p.name for p in gpu_wheels.check_wheel_list(good, lock)} == {"numpy", "onnxruntime-gpu"}
    cases = {
        "numpy is there 2 times": [*good, "numpy-2.4.6-cp312-cp312-manylinux2014_x86_64.whl"],
        "onnxruntime and onnxruntime-gpu together": [
            *good, "onnxruntime-1.32.0-cp312-cp312-manylinux_2_28_x86_64.whl"],
        "torch must not travel": [*good, "torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl"],
        "numpy 2.5.2 in numpy-2.5.2": ["numpy-2.5.2-cp312-cp312-manylinux_2_28_x86_64.whl"],
        "gevent is pinned by no lock": ["gevent-26.9.0-cp312-cp312-manylinux_2_28_x86_64.whl"],
        "ruff is not run by the GPU check": ["ruff-0.17.6-py3-none-manylinux_2_17_x86_64.whl"],
        "nvidia-cublas must not travel": ["nvidia_cublas-13.0-py3-none-manylinux_2_27_x86_64.whl"],
    }  # fmt: skip
    lock["nvidia-cublas"] = "13.0"
    for message, files in cases.items():
        with pytest.raises(WheelListError, match=message):
            gpu_wheels.check_wheel_list(files, lock)


def test_resolve_walks_pinned_requirements_for_python_3_12_and_leaves_torch_to_the_image():
    lock = {"app-a": "1", "b": "2", "c": "3", "d": "4", "old-only": "5", "in-image": "6",
            "onnxruntime-gpu": "1.31.1", "e": "7"}  # fmt: skip
    requires = {
        "app-a": ["b>=1", "torch>=2", "onnxruntime>=1.20", "old-only; python_version < '3.11'",
                  "in-image"],
        "b": ["c[extra1]", "nvidia-cublas; sys_platform == 'linux'"],
        "c": ["d; extra == 'extra1'", "zzz-unpinned; extra == 'other'"],
        "in-image": ["e"],
    }  # fmt: skip
    asked: list[list[str]] = []

    def requires_of(pins: list[Pin]) -> dict[str, list[str]]:
        asked.append([p.name for p in pins])
        return {p.name: requires.get(p.name, []) for p in pins}

    result = gpu_wheels.resolve([Requirement("app-a")], lock, requires_of, {"in-image": "6"})
    assert [p.name for p in result.carry] == ["app-a", "b", "onnxruntime-gpu", "c", "e", "d"]
    assert result.in_image == [Pin("in-image", "6")]  # walked (e came from it), not carried
    assert result.excluded == ["nvidia-cublas", "torch"]
    assert result.required_by["d"] == "c" and result.required_by["onnxruntime-gpu"] == "app-a"
    assert asked[0] == ["app-a"]  # a level at a time: one download per level
    requires["d"] = ["not-locked"]
    with pytest.raises(WheelListError, match=r"not-locked is needed .* no lock pins it"):
        gpu_wheels.resolve([Requirement("app-a")], lock, requires_of, {})


def test_the_real_list_from_our_locks_keeps_the_rules():
    """pyproject.toml and the locks, walked with this environment's installed metadata (the
    lock's versions): what the GPU check needs, pinned as tested, never torch or the CPU
    onnxruntime, none of the lint or fuzz tools."""
    lock = gpu_wheels.merge_locks(
        (REPO / name, gpu_wheels.read_lock(REPO / name)[0]) for name in gpu_bundle.LOCKS
    )

    def requires_of(pins: list[Pin]) -> dict[str, list[str]]:
        # onnxruntime-gpu is not installed here; its requirements are the CPU build's.
        installed = {p.name: "onnxruntime" if p.name == "onnxruntime-gpu" else p.name for p in pins}
        return {name: importlib.metadata.requires(dist) or [] for name, dist in installed.items()}

    roots = gpu_wheels.roots_from_pyproject(REPO / "pyproject.toml")
    result = gpu_wheels.resolve(roots, lock, requires_of)
    carried = {p.name: p.version for p in result.carry}
    assert carried["transformers"] == "4.57.6" and carried["huggingface-hub"] == "0.36.2"
    assert carried["onnxruntime-gpu"] == "1.31.1" and "onnxruntime" not in carried
    for needed in (
        "bentoml",
        "locust",
        "optimum",
        "optimum-onnx",
        "gguf",
        "pytest",
        "nvidia-ml-py",
    ):
        assert needed in carried, needed
    for absent in ("torch", "uv", "ruff", "schemathesis", "hypothesis", "fastapi", "triton"):
        assert absent not in carried, absent
    assert "torch" in result.excluded
    assert {p.name for p in result.in_image} == {"accelerate", "onnxscript", "safetensors"}
    files = [f"{n.replace('-', '_')}-{v}-py3-none-any.whl" for n, v in carried.items()]
    gpu_wheels.check_wheel_list(files, lock)


def test_the_default_part_fits_a_call_beside_the_tree():
    tree = int(7.8 * MIB)
    part = gpu_bundle.default_part_mib(tree, margin_mib=1.5)
    assert part == 54.5 and tree + part * MIB < gpu_bundle.LIMIT_MIB * MIB
    with pytest.raises(SystemExit, match="nothing is left"):
        gpu_bundle.default_part_mib(63 * MIB, margin_mib=1.5)


def test_unpack_exits_3_on_a_damaged_part(fake_bundle, tmp_path, capsys):
    out, _ = fake_bundle
    (out / "part-01").write_bytes(b"x")
    assert gpu_bundle.main(["unpack", "--bundle", str(out), "--work", str(tmp_path / "w")]) == 3
    assert "part-01 is damaged" in capsys.readouterr().err
    status = json.loads((tmp_path / "w" / "status.json").read_text())
    assert status["damaged"] == [1] and status["new"] == []


def test_a_detached_command_outlives_its_call_and_a_later_call_waits_for_it(tmp_path):
    detach = REPO / "bench" / "gpu_detach.sh"
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "GPU_DETACH_DIR": str(tmp_path / "state"), "OUT": str(out)}
    marker = tmp_path / "figures.md"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(detach), *args], env=env, capture_output=True, text=True, timeout=60
        )

    script = f"sleep 2; echo measured > {marker}; echo done; exit 7"
    started = run("start", "bash", "-c", script)
    assert started.returncode == 0 and "started pid" in started.stderr
    assert not marker.exists()  # the call returned before the command ended
    again = run("start", "bash", "-c", "echo twice")
    assert "already running" in again.stderr
    early = run("wait", "0")
    assert early.returncode == 124 and "wait again in the next call" in early.stderr
    waited = run("wait", "30", str(marker))
    assert waited.returncode == 7 and "done" in waited.stdout
    assert (out / "figures.md").read_text() == "measured\n"
    assert "twice" not in (out / "detached.log").read_text()


def test_install_puts_the_images_cuda_libraries_on_the_loader_path(fake_bundle, tmp_path):
    """The service imports no torch, so nothing loads cuBLAS and cuDNN for onnxruntime-gpu:
    their folders in the image's nvidia wheels go on LD_LIBRARY_PATH."""
    out, _ = fake_bundle
    nvidia = tmp_path / "image-site" / "nvidia"
    for folder, library in (("cu13", "libcublasLt.so.13"), ("cudnn", "libcudnn.so.9")):
        (nvidia / folder / "lib").mkdir(parents=True)
        (nvidia / folder / "lib" / library).write_bytes(b"")
    (nvidia / "empty" / "lib").mkdir(parents=True)  # no library: not listed
    done = _install(out, tmp_path, "--no-pip", "--libs-from", str(tmp_path / "image-site"))
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("export LD_LIBRARY_PATH="))
    assert line.startswith(f"export LD_LIBRARY_PATH={nvidia}/cu13/lib:{nvidia}/cudnn/lib$")
    assert "empty" not in line
    assert "export HF_HUB_OFFLINE=1" in done.stdout
