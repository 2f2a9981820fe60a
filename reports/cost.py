"""Dollars per million classifications from a price table and the throughput measured at SLO.

    $ per million = price per hour / (classifications per second * 3600) * 1,000,000

A price is "measured" only for the instance type the load-test machine stands for
(`measured_as` in the price table). Other CPU instance types are "derived" by scaling the
measured throughput with their vCPU count, an assumption the report states next to the figure.
GPU instances are never priced from CPU measurements ("not measured").

Where the load generator had to share the server's cores (a 2-core machine), the throughput
understates what the instance would serve alone, and by an amount that changes from run to
run with the generator's share. Such a figure is priced from the server's own CPU instead:

    $ per million = server CPU-seconds per text * price per hour / (vCPUs * 3600) * 1,000,000

which equals pricing a throughput of vCPUs / CPU-seconds per text: the instance's vCPUs all
busy with the server at the per-text cost measured at the SLO operating point. It leaves out
the headroom a real deployment keeps below full use and assumes the per-text CPU of the
operating point holds at full use (batching makes it fall, contention rise); the report says
which basis priced a figure (loadtests/rate_sweep.py records it in sweep.json).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml

DEFAULT_PRICES = Path(__file__).resolve().parent.parent / "configs" / "prices.yaml"
SECONDS_PER_HOUR = 3600
Basis = Literal["measured", "derived", "not measured"]


class PriceError(ValueError):
    """A price table that cannot be used; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Instance:
    name: str
    provider: str
    vcpus: int
    usd_per_hour: float
    gpu: str | None = None
    memory_gib: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise PriceError("an instance needs a name")
        if not isinstance(self.vcpus, int) or self.vcpus < 1:
            raise PriceError(f"instance {self.name}: vcpus must be an integer >= 1")
        if isinstance(self.usd_per_hour, bool) or not isinstance(self.usd_per_hour, int | float):
            raise PriceError(f"instance {self.name}: usd_per_hour must be a number")
        if not self.usd_per_hour > 0:
            raise PriceError(f"instance {self.name}: usd_per_hour must be > 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PriceTable:
    measured_as: str
    instances: list[Instance]
    references: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    path: str = ""

    def __post_init__(self) -> None:
        names = [i.name for i in self.instances]
        if len(set(names)) != len(names):
            raise PriceError(f"{self.path}: instance names must be unique, got {names}")
        if self.measured_as not in names:
            raise PriceError(
                f"{self.path}: measured_as {self.measured_as!r} is not among the instances {names}"
            )
        if self.measured.gpu:
            raise PriceError(f"{self.path}: measured_as must be a CPU instance (no gpu)")

    @property
    def measured(self) -> Instance:
        return next(i for i in self.instances if i.name == self.measured_as)


def load_prices(path: Path = DEFAULT_PRICES) -> PriceTable:
    path = Path(path)
    if not path.is_file():
        raise PriceError(f"{path} not found: pass a price table like configs/prices.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PriceError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("instances"), list):
        raise PriceError(f"{path}: expected a mapping with an 'instances' list")
    known = {f.name for f in dataclasses.fields(Instance)}
    instances = []
    for i, entry in enumerate(data["instances"]):
        if not isinstance(entry, dict):
            raise PriceError(f"{path}: instances[{i}] must be a mapping")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise PriceError(f"{path}: instances[{i}] has unknown keys {unknown}")
        try:
            instances.append(Instance(**entry))
        except TypeError as exc:
            raise PriceError(f"{path}: instances[{i}]: {exc}") from exc
        except PriceError as exc:
            raise PriceError(f"{path}: {exc}") from exc
    return PriceTable(
        measured_as=str(data.get("measured_as", "")),
        instances=instances,
        references=list(data.get("references") or []),
        path=str(path),
    )


def usd_per_million(usd_per_hour: float, classifications_per_s: float) -> float | None:
    """Cost of one million classifications at a sustained rate; None when the rate is 0."""
    if usd_per_hour < 0:
        raise ValueError(f"usd_per_hour must be >= 0, got {usd_per_hour}")
    if classifications_per_s <= 0:
        return None
    return usd_per_hour / (classifications_per_s * SECONDS_PER_HOUR) * 1e6


def usd_per_vcpu_second(instance: Instance) -> float:
    """The instance's price per vCPU-second."""
    return instance.usd_per_hour / (instance.vcpus * SECONDS_PER_HOUR)


def cpu_usd_per_million(cpu_s_per_text: float, instance: Instance) -> float | None:
    """Cost of one million classifications at `cpu_s_per_text` server CPU-seconds each, the
    instance's vCPUs fully used; None when the CPU per text is not positive."""
    if cpu_s_per_text <= 0:
        return None
    return cpu_s_per_text * usd_per_vcpu_second(instance) * 1e6


def cpu_texts_per_s(cpu_s_per_text: float, vcpus: int) -> float:
    """The throughput a CPU-seconds price stands for: every vCPU busy with the server."""
    if cpu_s_per_text <= 0 or vcpus < 1:
        raise ValueError(f"need cpu_s_per_text > 0 and vcpus >= 1, got {cpu_s_per_text}, {vcpus}")
    return vcpus / cpu_s_per_text


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cost:
    instance: str
    usd_per_million: float | None
    basis: Basis
    note: str  # how the figure was made, shown beside it


def costs_for(
    texts_per_s_at_slo: float | None,
    prices: PriceTable,
    *,
    machine: str,
    cpu_s_per_text: float | None = None,
) -> list[Cost]:
    """One Cost per instance type for a model whose throughput at SLO was measured on
    `machine` (standing for `prices.measured_as`).

    `cpu_s_per_text` (the server's CPU-seconds per text at the SLO operating point, from a
    sweep whose `cost_basis` is "server_cpu_seconds"): every CPU instance is priced from it at
    its price per vCPU-second instead of from the throughput; the measured type stays
    "measured", the others "derived" (the same CPU per text on another CPU type)."""
    if cpu_s_per_text is not None and texts_per_s_at_slo is not None and texts_per_s_at_slo > 0:
        return _cpu_costs(cpu_s_per_text, prices, machine=machine)
    measured = prices.measured
    out: list[Cost] = []
    for inst in prices.instances:
        if texts_per_s_at_slo is None or texts_per_s_at_slo <= 0:
            out.append(Cost(instance=inst.name, usd_per_million=None, basis="not measured",
                            note="no throughput at the SLO"))  # fmt: skip
        elif inst.name == measured.name:
            out.append(Cost(
                instance=inst.name,
                usd_per_million=usd_per_million(inst.usd_per_hour, texts_per_s_at_slo),
                basis="measured",
                note=f"throughput measured on {machine}, priced as {inst.name}",
            ))  # fmt: skip
        elif inst.gpu:
            note = f"GPU ({inst.gpu}): CPU measurements do not carry over"
            out.append(
                Cost(instance=inst.name, usd_per_million=None, basis="not measured", note=note)
            )
        else:
            scale = inst.vcpus / measured.vcpus
            out.append(Cost(
                instance=inst.name,
                usd_per_million=usd_per_million(inst.usd_per_hour, texts_per_s_at_slo * scale),
                basis="derived",
                note=(f"assumes throughput scales with vCPUs: {inst.vcpus}/{measured.vcpus} x "
                      f"the throughput measured on {machine}"),
            ))  # fmt: skip
    return out


def _cpu_costs(cpu_s_per_text: float, prices: PriceTable, *, machine: str) -> list[Cost]:
    measured = prices.measured
    ms = 1000 * cpu_s_per_text
    out: list[Cost] = []
    for inst in prices.instances:
        if inst.gpu:
            note = f"GPU ({inst.gpu}): CPU measurements do not carry over"
            out.append(
                Cost(instance=inst.name, usd_per_million=None, basis="not measured", note=note)
            )
            continue
        same = inst.name == measured.name
        note = (
            f"{ms:.2f} server CPU-ms per text measured on {machine} at the SLO, x the price "
            f"per vCPU-second of {inst.name}, all {inst.vcpus} vCPUs busy"
            + ("" if same else f"; assumes the same CPU per text as on {measured.name}")
        )
        out.append(Cost(
            instance=inst.name, usd_per_million=cpu_usd_per_million(cpu_s_per_text, inst),
            basis="measured" if same else "derived", note=note,
        ))  # fmt: skip
    return out
