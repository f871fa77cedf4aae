"""report.html opened in a real headless Chromium: every image loads and nothing overflows sideways.

A copy of the report gets a small script that, on `load`, measures the page and writes the result
into document.title; `chromium --dump-dom` prints the DOM after the load, and the test parses it.
Chromium is Debian's package (installed by .ci/run); without it the test skips locally and fails
under CI (tests/support/infra.py `unavailable`).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from model.evaluation.metrics import Estimates
from model.evaluation.report import build_metrics, model_metrics, write_report_html
from stream.cli import main
from stream.tools import evaluate
from tests.support.infra import unavailable
from tests.unit.test_eval_report import FakeEngine, dataset  # noqa: F401  (the pytest fixture)

VIEWPORT = (1280, 900)
_MARK = "AGEGATE_CHECK:"
_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                   .map(function (i) { return i.alt || i.src.slice(0, 60); });
  var se = document.scrollingElement;
  document.title = 'MARK' + JSON.stringify({images: imgs.length, broken: broken,
                                          scrollWidth: se.scrollWidth, innerWidth: window.innerWidth});
});
</script>""".replace("MARK", _MARK)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    unavailable("chromium not found: apt-get install chromium (Debian's package; .ci/run installs it)")


def page_check(report: Path, tmp: Path) -> dict[str, Any]:
    """Load a copy of `report` with the probe at a 1280 px wide window; return what the probe measured."""
    page = tmp / f"probe-{report.name}"
    text = report.read_text(encoding="utf-8")
    page.write_text(
        text.replace("</body>", _PROBE + "</body>") if "</body>" in text else text + _PROBE, encoding="utf-8"
    )
    profile = tmp / "chromium-profile"
    cmd = [
        _chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    env = {**os.environ, "HOME": str(tmp)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    found = re.search(r"<title>" + re.escape(_MARK) + r"(.*?)</title>", proc.stdout, re.S)
    assert found, f"the probe did not report (chromium rc {proc.returncode}): {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return result


def problems(result: dict[str, Any]) -> list[str]:
    """The failures the report must not have: an image that did not load, a page wider than the window."""
    out = [f"image did not load: {b}" for b in result["broken"]]
    if result["scrollWidth"] > result["innerWidth"]:
        out.append(f"horizontal overflow: page {result['scrollWidth']} px wide in a {result['innerWidth']} px window")
    return out


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = {"good": FakeEngine(1.0), "worse": FakeEngine(1.0, minors_shift=4.0)}
    monkeypatch.setattr(evaluate, "_load_engine", lambda ckpt, device, threads: specs[ckpt])


@pytest.mark.usefixtures("engines")
def test_report_loads_every_image_and_fits_the_window(dataset: Path, tmp_path: Path) -> None:  # noqa: F811
    _chromium()
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--bootstrap",
            "40",
            "--min-cell-size",
            "10",
            "--model",
            "good",
            "--model",
            "worse",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--policy",
            "default",
            "--gate",
        ]
    )
    assert code == evaluate.EXIT_GATE_FAILED  # a failing gate: its text is in the report, and must wrap
    report = out / "report.html"
    text = report.read_text(encoding="utf-8")
    for title in (
        "Interval reliability",
        "Operating curves",
        "Per-year pass and rejection at T=18",
        "Estimate vs true age",
        "Error histograms",
        "Release gate",
    ):
        assert f"<h2>{title}" in text, title
    assert "rows" not in json.loads((out / "metrics.json").read_text())["models"][0]  # rows stay out of the JSON
    result = page_check(report, tmp_path)
    assert result["innerWidth"] == VIEWPORT[0]
    assert result["images"] >= 8
    assert problems(result) == []


def test_check_flags_a_broken_image_and_a_wide_element(tmp_path: Path) -> None:
    _chromium()
    good = tmp_path / "good.html"
    good.write_text("<!doctype html><html><head><title>x</title></head><body><p>fine</p></body></html>")
    assert problems(page_check(good, tmp_path)) == []
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!doctype html><html><head><title>x</title></head><body>"
        "<img alt='bad plot' src='data:image/png;base64,bm90IGEgcG5n'></body></html>"
    )
    assert problems(page_check(broken, tmp_path)) == ["image did not load: bad plot"]
    wide = tmp_path / "wide.html"
    wide.write_text(
        "<!doctype html><html><head><title>x</title></head><body><div style='width:3000px'>wide</div></body></html>"
    )
    found = problems(page_check(wide, tmp_path))
    assert len(found) == 1
    assert found[0].startswith("horizontal overflow: page 3")


def test_an_unbroken_gate_line_and_a_wide_table_stay_inside_the_window(tmp_path: Path) -> None:
    _chromium()
    est = Estimates.build(
        [10.0, 17.0, 19.0, 30.0], [12.0, 18.5, 19.0, 29.0], [1.0, 1.0, 1.0, 1.0], {"sex": ["F", "M", "F", "M"]}
    )
    doc = build_metrics(
        [model_metrics(est, name="m" * 400, n_boot=10, min_cell_size=1)],
        dataset={"content_hash": "h", "split": "test"},
        config={},
    )
    report = write_report_html(
        doc, tmp_path / "report.html", gate_text="VIOLATED " + "x" * 5000, estimates={"m" * 400: est}
    )
    result = page_check(report, tmp_path)
    assert result["images"] >= 6
    assert problems(result) == []
