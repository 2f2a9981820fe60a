"""Tests for the cost model: the arithmetic on known inputs and the price table's rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from reports.cost import (
    DEFAULT_PRICES,
    PriceError,
    costs_for,
    cpu_texts_per_s,
    cpu_usd_per_million,
    load_prices,
    usd_per_million,
    usd_per_vcpu_second,
)

TABLE = """
measured_as: cpu-2
instances:
  - {name: cpu-2, provider: x, vcpus: 2, usd_per_hour: 0.09}
  - {name: cpu-8, provider: x, vcpus: 8, usd_per_hour: 0.36}
  - {name: gpu-1, provider: x, vcpus: 4, usd_per_hour: 0.80, gpu: L4}
references:
  - {what: "DistilBERT on L4", usd_per_million: 0.25, source: somewhere}
"""


@pytest.fixture
def prices(tmp_path: Path):
    path = tmp_path / "prices.yaml"
    path.write_text(TABLE)
    return load_prices(path)


def test_usd_per_million_on_known_inputs() -> None:
    # $0.09 an hour at 100 per second: 360,000 an hour, so a million cost 0.09 / 0.36 = $0.25.
    assert usd_per_million(0.09, 100.0) == pytest.approx(0.25)
    assert usd_per_million(3.6, 1000.0) == pytest.approx(1.0)
    assert usd_per_million(1.0, 1e6 / 3600) == pytest.approx(1.0)
    assert usd_per_million(0.09, 0.0) is None  # never met the SLO: no price, not infinity
    with pytest.raises(ValueError):
        usd_per_million(-1.0, 10.0)


def test_only_the_measured_type_is_measured(prices) -> None:
    costs = {c.instance: c for c in costs_for(100.0, prices, machine="2-core test CPU")}
    assert costs["cpu-2"].basis == "measured"
    assert costs["cpu-2"].usd_per_million == pytest.approx(0.25)
    assert "2-core test CPU" in costs["cpu-2"].note
    # 4x the vCPUs at 4x the price: the same cost per million, under a stated assumption.
    assert costs["cpu-8"].basis == "derived"
    assert costs["cpu-8"].usd_per_million == pytest.approx(0.25)
    assert "assumes throughput scales with vCPUs" in costs["cpu-8"].note
    assert costs["gpu-1"].basis == "not measured" and costs["gpu-1"].usd_per_million is None
    assert all(c.usd_per_million is None for c in costs_for(None, prices, machine="m"))


def test_bad_price_tables_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("measured_as: nope\ninstances:\n  - {name: a, provider: x, vcpus: 2, "
                    "usd_per_hour: 1}\n")  # fmt: skip
    with pytest.raises(PriceError, match="measured_as 'nope' is not among"):
        load_prices(path)
    path.write_text("measured_as: a\ninstances:\n  - {name: a, provider: x, vcpus: 2, "
                    "usd_per_hour: -1}\n")  # fmt: skip
    with pytest.raises(PriceError, match=r"p\.yaml: instance a: usd_per_hour must be > 0"):
        load_prices(path)
    path.write_text("measured_as: a\ninstances:\n  - {name: a, provider: x, vcpus: 2, "
                    "usd_per_hour: 1, colour: red}\n")  # fmt: skip
    with pytest.raises(PriceError, match=r"unknown keys \['colour'\]"):
        load_prices(path)
    with pytest.raises(PriceError, match="not found"):
        load_prices(tmp_path / "missing.yaml")


def test_shipped_price_table_loads() -> None:
    table = load_prices(DEFAULT_PRICES)
    assert table.measured.vcpus == 2 and table.measured.gpu is None
    assert any(i.gpu for i in table.instances)
    assert all(i.source for i in table.instances)  # every price says where it came from


def test_cpu_seconds_price_on_known_inputs(prices) -> None:
    cpu2 = next(i for i in prices.instances if i.name == "cpu-2")
    # $0.09 an hour for 2 vCPUs: $0.045 per vCPU-hour, $1.25e-5 per vCPU-second.
    assert usd_per_vcpu_second(cpu2) == pytest.approx(1.25e-5)
    # 4 CPU-ms a text: a million texts take 4,000 vCPU-seconds, $0.05.
    assert cpu_usd_per_million(0.004, cpu2) == pytest.approx(0.05)
    # The same as pricing the throughput of 2 vCPUs at 4 ms each: 500 texts/s.
    assert cpu_texts_per_s(0.004, 2) == pytest.approx(500.0)
    assert usd_per_million(0.09, cpu_texts_per_s(0.004, 2)) == pytest.approx(0.05)
    assert cpu_usd_per_million(0.0, cpu2) is None
    with pytest.raises(ValueError):
        cpu_texts_per_s(0.0, 2)
    # The demo's shipped price: c7i.large, $0.08925 an hour, 2 vCPUs; 3.4 CPU-ms a text.
    c7i = load_prices(DEFAULT_PRICES).measured
    assert cpu_usd_per_million(0.0034, c7i) == pytest.approx(0.0034 * 0.08925 / 7200 * 1e6)


def test_costs_for_prices_from_cpu_seconds_when_given(prices) -> None:
    # 100 texts/s measured with the generator on the same cores, the server using 4 CPU-ms a
    # text: priced from the CPU (as 500 texts/s on 2 vCPUs), not from the 100 texts/s.
    costs = {c.instance: c for c in costs_for(100.0, prices, machine="2-core test CPU",
                                              cpu_s_per_text=0.004)}  # fmt: skip
    assert costs["cpu-2"].basis == "measured"
    assert costs["cpu-2"].usd_per_million == pytest.approx(0.05)
    assert "4.00 server CPU-ms per text" in costs["cpu-2"].note
    assert costs["cpu-8"].basis == "derived"  # $0.36 / 8 vCPUs: the same vCPU-second price
    assert costs["cpu-8"].usd_per_million == pytest.approx(0.05)
    assert costs["gpu-1"].usd_per_million is None
    # No throughput at the SLO: no price, whatever the CPU.
    assert all(
        c.usd_per_million is None
        for c in costs_for(None, prices, machine="m", cpu_s_per_text=0.004)
    )
