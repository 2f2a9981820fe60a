"""The HTML report and the answer page in a real browser: headless Chromium opens each from
disk, with no network, and the plots must have rendered (plotly's SVG with points) without
console errors, with nothing cut off at a desktop's and a laptop's width.

Skips where Chromium is absent; `.ci/run` installs it, so CI always runs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reports.answer import group_from_output
from reports.answer_page import build_answer_page
from reports.report import build_report
from tests.answer_fixtures import multitask_record, two_datasets
from tests.test_report import _model_dir, _sweep_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)"),
]
# Enough virtual time for plotly to draw; the page needs no network, so nothing waits on one.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--window-size=1300,1500"]  # fmt: skip


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        check=False,
    )  # fmt: skip


def _console(stderr: str) -> list[str]:
    # Chromium logs every page console message as "...:CONSOLE(line)] "text", source: ...".
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html")
    models = [
        _model_dir(root, "enc-fp32", metrics={"accuracy": 0.88, "macro_f1": 0.88}),
        _model_dir(root, "enc-int8", precision="int8", metrics={"accuracy": 0.87}),
        _model_dir(root, "lm-fp32", family="causal_lm", metrics={"accuracy": 0.90}),
        _model_dir(root, "ext-int8", family="extracted_encoder", precision="int8",
                   metrics={"accuracy": 0.80}),
    ]  # fmt: skip
    sweeps = [
        _sweep_dir(root, "enc-fp32", [(1, 40.0, 20.0), (4, 100.0, 45.0)], 50),
        _sweep_dir(root, "enc-int8", [(1, 60.0, 15.0), (4, 150.0, 30.0)], 50),
        _sweep_dir(root, "lm-fp32", [(1, 10.0, 45.0)], 50),
        _sweep_dir(root, "ext-int8", [(1, 20.0, 40.0)], 50),
    ]
    result = build_report(model_dirs=models, loadtest_dirs=sweeps, out_dir=root / "report")
    assert result.html_path is not None
    return result.html_path


def test_html_is_self_contained(report_html: Path) -> None:
    page = report_html.read_text()
    # No external scripts, styles or fonts: the page must open from disk offline.
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=\"?https?:", page)
    assert "Recommended: enc-int8" in page


def test_plots_render_in_headless_chromium(report_html: Path, tmp_path: Path) -> None:
    dom = _chromium("--dump-dom", report_html.as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # Two plotly figures, each drawn as SVG with one marker per model.
    assert dom.stdout.count('class="main-svg"') >= 4, dom.stdout[-2000:]
    assert dom.stdout.count('class="scatterlayer mlayer"') == 2
    assert dom.stdout.count('class="point"') >= 4 + 4  # 4 models on each plot
    assert "Accuracy on the test split (%)" in dom.stdout  # axis titles with units
    assert _console(dom.stderr) == [], _console(dom.stderr)


def test_screenshot_is_not_blank(report_html: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    sizes = {}
    for name, page in (("report", report_html), ("blank", blank)):
        shot = tmp_path / f"{name}.png"
        done = _chromium(f"--screenshot={shot}", page.as_uri(), cwd=tmp_path)
        assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        sizes[name] = shot.stat().st_size
    # A white page compresses to a few kB; text, tables and plots do not.
    assert sizes["report"] > 10 * sizes["blank"], sizes


LAYOUT_PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const right = (element) => element.getBoundingClientRect().right;
  const fits = (inner, outer) => right(inner) <= right(outer) + 1;
  const out = {
    page: document.documentElement.scrollWidth <= window.innerWidth,
    tables: [...document.querySelectorAll("div.table")]
      .map(d => d.scrollWidth <= d.clientWidth + 1),
    legends: [...document.querySelectorAll("g.legend")].map(g => fits(g, g.closest("svg"))),
    plots: [...document.querySelectorAll("div.plotly-graph-div")]
      .map(p => fits(p, document.body) && p.getBoundingClientRect().left >= 0),
  };
  const pre = document.createElement("pre");
  pre.id = "layout";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 300));
</script>"""


@pytest.mark.parametrize("width", [1366, 1024])  # a desktop's and a small laptop's window
def test_nothing_is_cut_off_at_desktop_and_laptop_widths(report_html: Path, tmp_path: Path, width):
    import json

    probed = tmp_path / "probed.html"
    probed.write_text(report_html.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    flags = [f for f in FLAGS if not f.startswith("--window-size")]
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, *flags, f"--window-size={width},1500", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="layout">(.*?)</pre>', done.stdout)
    assert found, done.stdout[-2000:]
    layout = json.loads(found.group(1))
    assert layout["page"], "the page is wider than the window"
    assert len(layout["legends"]) == 2 and all(layout["legends"]), layout  # no cut legend
    assert len(layout["tables"]) == 5
    if width >= 1366:  # on a desktop every table fits; narrower, a wide one may scroll
        assert all(layout["tables"]), layout
    assert _console(done.stderr) == [], _console(done.stderr)


@pytest.fixture(scope="module")
def answer_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("answer")
    outputs = two_datasets(root)
    groups = [group_from_output(o) for o in outputs]
    # With the multi-task section, so its two tables are checked to fit too.
    multitask = multitask_record(
        root,
        multi={"sst2": 0.826, "trec": 0.86, "ag_news": 0.84},
        encoders={"sst2": 0.792, "trec": 0.844, "ag_news": 0.856},
    )
    result = build_answer_page(groups, root / "page", latency_targets=[50, 100, 200],
                               multitask=multitask)  # fmt: skip
    assert result.html_path is not None
    return result.html_path


def _probe(page: Path, tmp_path: Path, width: int) -> tuple[dict, str]:
    import json

    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    flags = [f for f in FLAGS if not f.startswith("--window-size")]
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, *flags, f"--window-size={width},1500", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="layout">(.*?)</pre>', done.stdout)
    assert found, done.stdout[-2000:]
    return json.loads(found.group(1)), done.stderr


def test_answer_page_plots_render_in_headless_chromium(answer_html: Path, tmp_path: Path) -> None:
    page = answer_html.read_text()
    assert not re.search(r"<script[^>]+src=", page)  # self-contained: opens offline
    dom = _chromium("--dump-dom", answer_html.as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # A latency-throughput plot per dataset and the quantization plot, each drawn as SVG.
    assert dom.stdout.count('class="plotly-graph-div') == 3
    assert dom.stdout.count('class="scatterlayer mlayer"') == 3
    # Curves: 3 models x (3 or 2 steps) on sst2, 3 x 2 on trec; quantization: 2 int8 points.
    assert dom.stdout.count('class="point"') >= 8 + 6 + 2
    assert "p95 latency (ms, log scale)" in dom.stdout and "throughput (texts/s)" in dom.stdout
    assert "Convolutional Neural Networks for Sentence Classification" in dom.stdout
    assert _console(dom.stderr) == [], _console(dom.stderr)


@pytest.mark.parametrize("width", [1366, 1024])
def test_answer_page_fits_desktop_and_laptop_widths(answer_html: Path, tmp_path: Path, width):
    layout, stderr = _probe(answer_html, tmp_path, width)
    assert layout["page"], "the page is wider than the window"
    assert len(layout["plots"]) == 3 and all(layout["plots"]), layout  # no plot cut off
    assert len(layout["legends"]) == 3 and all(layout["legends"]), layout  # no cut legend
    # The summary matrix, per dataset the models, quantization and per-class tables, the
    # multi-task section's two; the folded confusion matrices count too (closed, no width).
    assert len(layout["tables"]) >= 1 + 2 * 3 + 2
    assert all(layout["tables"]), layout  # every table fits, at 1024 px too
    assert _console(stderr) == [], _console(stderr)
