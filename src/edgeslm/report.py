"""The side-by-side report: teacher vs student, FP32 vs INT8, as JSON and as one self-contained HTML page."""

from __future__ import annotations

import html
import importlib.util
import io
import re
from pathlib import Path
from typing import Any

from ._fs import write_bytes

__all__ = ["compare", "svg_figure", "write_html"]

_COLORS = ("#8c8c8c", "#b0b0b0", "#4c78a8", "#f58518")  # teacher rows grey, student rows in colour

# The columns every view of the report shows, with their units and whether bigger is better.
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("accuracy", "accuracy", True),
    ("p50_ms", "p50 ms", False),
    ("p95_ms", "p95 ms", False),
    ("size_mb", "file MB", False),
    ("peak_rss_mb", "peak RSS MB", False),
)


def compare(measured: list[dict[str, Any]], *, dataset_name: str, eval_split: str) -> dict[str, Any]:
    """Drop raw predictions, add agreement with the teacher and the ratios that matter."""
    teacher_pred = measured[0]["predictions"]
    models = []
    for m in measured:
        pred = m.pop("predictions")
        agree = sum(a == b for a, b in zip(pred, teacher_pred, strict=True)) / len(pred)
        models.append({**m, "agreement_with_teacher": agree})
    by = {m["name"]: m for m in models}
    student, teacher = by["student bundle"], by["teacher"]
    one_click = by.get("teacher one-click")
    ratios = {
        "speedup_p50_vs_teacher_torch": teacher["p50_ms"] / student["p50_ms"],
        "size_ratio_vs_teacher_fp32": teacher["size_mb"] / student["size_mb"],
        "accuracy_kept_vs_teacher": student["accuracy"] / teacher["accuracy"],
    }
    if one_click:
        ratios["speedup_p50_vs_teacher_ort_int8"] = one_click["p50_ms"] / student["p50_ms"]
    return {"dataset": dataset_name, "eval_split": eval_split, "models": models, "ratios": ratios}


def svg_figure(fig: Any, salt: str) -> str:
    """A matplotlib figure as inline SVG; ``salt`` keeps element ids unique when several share one page.

    The RDF metadata block goes (its namespace URLs look like links to fetch), and so does the XLink namespace:
    ``href`` is plain SVG 2, which every current browser reads, so the page names no URL but the SVG namespace.
    """
    import matplotlib
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg") :], flags=re.S)
    return text.replace(' xmlns:xlink="http://www.w3.org/1999/xlink"', "").replace("xlink:href=", "href=")


def _bars(models: list[dict[str, Any]], key: str, label: str) -> str:
    """One horizontal bar chart (matplotlib, inline SVG: no scripts, no network)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmt = "{:.3f}" if key == "accuracy" else "{:.1f}" if key.endswith("mb") else "{:.2f}"
    names = [f"{m['name']} {m['precision'].upper()}" for m in models]
    values = [float(m[key]) for m in models]
    fig, ax = plt.subplots(figsize=(7.5, 0.7 + 0.42 * len(models)))
    bars = ax.barh(names, values, color=[_COLORS[i % len(_COLORS)] for i in range(len(models))])
    ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3, fontsize=9)
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.set_xlim(0, max(values, default=1.0) * 1.18 or 1.0)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(label, loc="left", fontweight="bold")
    return svg_figure(fig, f"build-{key}")


def write_html(report: dict[str, Any], path: Path) -> None:
    """A single HTML file: the table, four bar charts, the ratios and the recipe. Opens offline."""
    models = report["models"]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in COLUMNS)
    rows = []
    for m in models:
        cells = "".join(
            f"<td>{m[key]:.3f}</td>" if key == "accuracy" else f"<td>{m[key]:.2f}</td>" for key, _, _ in COLUMNS
        )
        extra = f"<td>{m.get('macro_f1', 0):.3f}</td><td>{m['agreement_with_teacher']:.3f}</td>"
        rows.append(
            f"<tr><td>{html.escape(m['name'])}</td><td>{m['precision'].upper()}</td><td>{m['runtime']}</td>"
            f"<td>{m['parameters'] / 1e6:.2f}M</td>{cells}{extra}</tr>"
        )
    ratios = "".join(
        f"<li>{html.escape(k.replace('_', ' '))}: <b>{f'{v:.1%}' if k.startswith('accuracy') else f'{v:.2f}×'}</b></li>"
        for k, v in report["ratios"].items()
    )
    if importlib.util.find_spec("matplotlib") is not None:
        charts = "".join(_bars(models, key, label) for key, label, _ in COLUMNS if key != "p95_ms")
    else:  # a report without charts beats a build that fails at its last step
        charts = "<p>Charts need matplotlib: <code>pip install 'edgeslm[report]'</code>, then rebuild.</p>"
    check = report.get("export_check", {})
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeslm report: {html.escape(report["dataset"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}svg{{display:block;margin:1em 0}}code{{background:#f4f4f4}}</style></head>
<body><h1>edgeslm build report</h1>
<p>Dataset <b>{html.escape(report["dataset"])}</b>, {html.escape(report["eval_split"])} split,
{models[0]["eval_rows"]} rows. Latency: batch 1, {models[0]["threads"]} intra-op thread(s), model call only,
{models[0]["latency_rows"]} real {html.escape(report["eval_split"])} sentences after warm-up. Peak RSS: the measuring
process (runtime only for ONNX rows, torch for the teacher row).</p>
<table><tr><th>model</th><th>precision</th><th>runtime</th><th>params</th>{head}<th>macro-F1</th>
<th>agreement with teacher</th></tr>{"".join(rows)}</table>
<h2>Ratios</h2><ul>{ratios}</ul>
<h2>Charts</h2>{charts}
<h2>Export check</h2><p>ONNX vs torch on {check.get("rows", 0)} sentences: max |Δlogit|
{check.get("max_abs_diff", float("nan")):.2e}, label agreement {check.get("label_agreement", float("nan")):.3f}.</p>
<h2>Recipe</h2><pre><code>{html.escape(_toml_like(report.get("recipe", {})))}</code></pre>
</body></html>
"""
    write_bytes(path, doc.encode("utf-8"))


def _toml_like(recipe: dict[str, Any]) -> str:
    lines = [f"{k} = {v!r}" for k, v in recipe.items() if not isinstance(v, dict)]
    for section, table in recipe.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{k} = {v!r}" for k, v in table.items())
    return "\n".join(lines)
