"""The build report (report.html): matplotlib charts, self-contained, rendered and checked in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edgeslm.report import write_html
from test_compare import _plot_cells, _screenshot, needs_chromium


def _report() -> dict[str, Any]:
    rows = [
        ("teacher", "fp32", "torch", 22.7e6, 0.893, 14.5, 90.7, 610.0),
        ("teacher one-click", "int8", "onnxruntime", 22.7e6, 0.883, 3.7, 23.4, 180.0),
        ("student", "fp32", "onnxruntime", 15.6e6, 0.869, 2.6, 62.4, 160.0),
        ("student bundle", "int8", "onnxruntime", 15.6e6, 0.859, 1.3, 16.1, 95.0),
    ]
    models = [
        {
            "name": name, "precision": prec, "runtime": runtime, "parameters": params, "accuracy": acc,
            "macro_f1": acc - 0.01, "p50_ms": p50, "p95_ms": p50 * 1.4, "size_mb": mb, "peak_rss_mb": rss,
            "agreement_with_teacher": 1.0 if name == "teacher" else 0.93, "eval_rows": 872, "threads": 1,
            "latency_rows": 300,
        }
        for name, prec, runtime, params, acc, p50, mb, rss in rows
    ]  # fmt: skip
    ratios = {"speedup_p50_vs_teacher_torch": 11.2, "size_ratio_vs_teacher_fp32": 5.6, "accuracy_kept_vs_teacher": 0.96}
    return {
        "dataset": "sst2",
        "eval_split": "dev",
        "models": models,
        "ratios": ratios,
        "export_check": {"rows": 128, "max_abs_diff": 2e-6, "label_agreement": 1.0},
        "recipe": {"base": "minilm", "distill": {"num_layers": 2}},
    }


def test_build_report_charts_are_matplotlib_and_self_contained(tmp_path: Path) -> None:
    write_html(_report(), tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 4 and "<script" not in page
    assert page.count('<g id="figure_1"') == 4  # drawn by matplotlib (its figure groups), not by hand
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)  # nothing to fetch: no XLink, no RDF
    for value in ("0.859", "1.30", "16.1", "95.0"):  # the bars carry their values
        assert f">{value}<" in page or value in page


@needs_chromium
def test_build_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    write_html(_report(), tmp_path / "report.html")
    console = _screenshot(tmp_path / "report.html", tmp_path / "report.png", 1000, 2400)
    assert console == [], console
    assert Image.open(tmp_path / "report.png").convert("L").getextrema()[0] < 100  # drawn, not a blank page
    counts = _plot_cells(tmp_path / "report.html", tmp_path)
    assert len(counts) == 4 and all(c > 100 for c in counts), counts  # every chart has coloured bars
