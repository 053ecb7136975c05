"""The compare report: ``compare.json`` and one self-contained ``report.html`` a product manager can read.

Plain-language summary on top, then plots drawn by matplotlib (Agg backend, written as SVG and inlined: no
scripts, no network, no CDN), then the tables. Every number comes from the comparison dict; a gap says "no source".
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from .._fs import write_bytes, write_json
from ..report import svg_figure

__all__ = ["summary", "svg_figure", "write_compare_report"]

DEVICE_COLOR, WARM_COLOR, COLD_COLOR = "#4c78a8", "#f58518", "#e45756"


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f} ms" if x >= 10 else f"{x:.1f} ms"


def _bytes(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1000:.1f} KB" if x >= 1000 else f"{x:.0f} B"


def _measured(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in result["networks"] if "skipped" not in n]


def summary(result: dict[str, Any]) -> list[str]:
    """The plain-language findings, one sentence each, from measured numbers only."""
    dev = result["device"]
    lines = [
        f"On this host ({dev['threads']} thread, batch 1), the bundle answers in {_ms(dev['warm']['p50_ms'])} "
        f"(p50; p95 {_ms(dev['warm']['p95_ms'])}) and sends 0 bytes: the text never leaves the device. "
        "No device profile has a sourced speed factor yet, so phone and board latencies are not extrapolated."
    ]
    for n in _measured(result):
        name, warm, cold = n["profile"]["name"], n["warm"], n["cold"]
        lines.append(
            f"On {name} ({n['profile']['description']}), the cloud answers in {_ms(warm['p50_ms'])} on a kept-alive "
            f"connection and {_ms(cold['p50_ms'])} on a new one (p95 {_ms(warm['p95_ms'])} / "
            f"{_ms(cold['p95_ms'])}), moving {_bytes(warm['bytes_sent_mean'])} up and "
            f"{_bytes(warm['bytes_received_mean'])} down per call ({_bytes(cold['bytes_sent_mean'])} / "
            f"{_bytes(cold['bytes_received_mean'])} with a fresh {'TLS ' if result['tls'] else ''}connection)"
            + (f"; {warm['calls'] - warm['answered']} of {warm['calls']} calls failed." if warm["errors"] else ".")
        )
    for n in result["networks"]:
        if "skipped" in n:
            lines.append(f"{n['profile']['name']}: not measured ({n['skipped']}).")
    first = next(iter(_measured(result)), None)
    if first and first["agreement"] is not None:
        lines.append(
            f"Device and cloud agree on {100 * first['agreement']:.1f}% of {result['rows']} {result['dataset']} "
            f"{result['eval_split']} sentences; accuracy {100 * dev['accuracy']:.1f}% on the device vs "
            f"{100 * first['cloud_accuracy']:.1f}% in the cloud."
        )
    cost = result["cost"]
    be = cost["break_even_calls_per_month"]
    lines.append(
        f"Cost ({cost['price']['description']}): {cost['units_per_call']:.2f} billed units per call; the device's "
        f"build compute amortised over {cost['amortize_months']:g} months is ${cost['device_monthly_usd']:.4f}/month, "
        + (f"so the device is cheaper above {be:,.0f} calls a month." if be is not None else "never cheaper here.")
    )
    known = [d for d in result["energy"]["devices"] if d["compute"]["joules"] is not None]
    radio = [
        (d["compute"]["device"], r["joules"]) for d in result["energy"]["devices"] for r in [d["radio"].get("wifi", {})]
    ]
    radio = [(name, j) for name, j in radio if j is not None]
    energy = (
        "Device compute energy per query: "
        + (", ".join(f"{d['compute']['device']} {1000 * d['compute']['joules']:.1f} mJ" for d in known) or "no device")
        + " has both a sourced speed factor and a sourced active power (the rest are gaps, listed below)."
    )
    if radio:
        energy += " Wi-Fi radio per cloud call: " + ", ".join(f"{n} {1000 * j:.1f} mJ" for n, j in radio) + "."
    lines.append(energy)
    for name, a in result["availability"].items():
        lines.append(
            f"With the {name.replace('cloud_', 'cloud ')}, the device answered {a['device_answered']}/{a['calls']} "
            f"and the cloud {a['cloud_answered']}/{a['calls']} ({', '.join(a['errors']) or 'no errors'}, within "
            f"{a['seconds_to_fail_max']:.2f} s)."
        )
    return lines


def _plots(result: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    nets = _measured(result)
    # 1. latency distributions
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * (1 + 2 * len(nets))))
    series = [("device (warm)", result["device"]["warm"]["latencies_ms"], DEVICE_COLOR)]
    for n in nets:
        series.append((f"{n['profile']['name']} warm", n["warm"]["latencies_ms"], WARM_COLOR))
        series.append((f"{n['profile']['name']} new conn.", n["cold"]["latencies_ms"], COLD_COLOR))
    series = [s for s in series if s[1]]
    box = ax.boxplot([s[1] for s in series], vert=False, whis=(5, 95), showfliers=False, patch_artist=True)
    for patch, s in zip(box["boxes"], series, strict=True):
        patch.set_facecolor(s[2])
    ax.set_yticks(range(1, len(series) + 1), [s[0] for s in series])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency, ms (log; box = p25-p75, whiskers p5-p95)")
    ax.set_title("What the user waits for, per network profile")
    out.append(("Latency", svg_figure(fig, "latency")))
    # 2. bytes per query
    if nets:
        fig, ax = plt.subplots(figsize=(8, 2.6))
        names = ["device", "cloud warm", "cloud new conn."]
        sent = [0, nets[0]["warm"]["bytes_sent_mean"] or 0, nets[0]["cold"]["bytes_sent_mean"] or 0]
        recv = [0, nets[0]["warm"]["bytes_received_mean"] or 0, nets[0]["cold"]["bytes_received_mean"] or 0]
        y = range(len(names))
        ax.barh([i - 0.2 for i in y], sent, 0.4, label="sent", color=WARM_COLOR)
        ax.barh([i + 0.2 for i in y], recv, 0.4, label="received", color=DEVICE_COLOR)
        top = max(max(sent), max(recv), 1)
        for i in y:
            ax.text(max(sent[i], recv[i]) + top * 0.02, i, f"{sent[i]:.0f} B up / {recv[i]:.0f} B down", va="center")
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 2.0)
        ax.set_xlabel("bytes per query, counted at the socket (TCP payload, TLS included)")
        ax.legend(loc="lower right")
        ax.set_title("Data that leaves the device")
        out.append(("Bytes per query", svg_figure(fig, "bytes")))
    # 3. energy
    rows = result["energy"]["devices"]
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.45 * len(rows)))
    for i, d in enumerate(rows):
        c, r = d["compute"], d["radio"].get("wifi", {})
        value = c["joules"] if c["joules"] is not None else c["joules_at_host_speed"]
        if value is not None:
            ax.barh(i - 0.2, value * 1000, 0.4, color=DEVICE_COLOR, hatch=None if c["joules"] else "//")
        if r.get("joules") is not None:
            ax.barh(i + 0.2, r["joules"] * 1000, 0.4, color=WARM_COLOR)
        note = "on-device compute: " + (
            "no source (" + ", ".join(c["gaps"]) + ")"
            if value is None
            else "hatched = at host speed"
            if not c["joules"]
            else "sourced"
        )
        end = max(value or 0, (r.get("joules") or 0)) * 1000
        ax.text(end, i, "  " + note, va="center", fontsize=8)
    ax.set_xlim(0, max(ax.get_xlim()[1], 1e-3) * 1.8)
    ax.set_yticks(range(len(rows)), [d["compute"]["device"] for d in rows])
    ax.invert_yaxis()
    ax.set_xlabel("mJ per query (blue: device compute; orange: Wi-Fi radio for one cloud call)")
    ax.set_title("Energy per query, where sourced")
    out.append(("Energy", svg_figure(fig, "energy")))
    # 4. cost vs volume
    cost = result["cost"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    v = [p["calls_per_month"] for p in cost["curve"]]
    ax.plot(v, [p["cloud_usd"] for p in cost["curve"]], "-o", color=WARM_COLOR, label=cost["price"]["name"])
    ax.plot(v, [p["device_usd"] for p in cost["curve"]], "-s", color=DEVICE_COLOR, label="device (amortised build)")
    if cost["break_even_calls_per_month"]:
        ax.axvline(cost["break_even_calls_per_month"], color="#888", ls="--", label="break-even")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3)  # symlog: a free tier's $0 stays on the chart
    ax.set_ylim(0, max(max(p["cloud_usd"], p["device_usd"]) for p in cost["curve"]) * 10 + 1e-3)
    ax.set_xlabel("calls per month")
    ax.set_ylabel("USD per month")
    ax.legend()
    ax.set_title("Cost against monthly volume")
    out.append(("Cost", svg_figure(fig, "cost")))
    # 5. accuracy and agreement
    if nets:
        fig, ax = plt.subplots(figsize=(8, 2.2))
        vals = [
            ("device accuracy", result["device"]["accuracy"]),
            ("cloud accuracy", nets[0]["cloud_accuracy"] or 0),
            ("agreement", nets[0]["agreement"] or 0),
        ]
        ax.barh([n for n, _ in vals], [x for _, x in vals], color=[DEVICE_COLOR, WARM_COLOR, "#54a24b"])
        for i, (_, x) in enumerate(vals):
            ax.text(x + 0.01, i, f"{100 * x:.1f}%", va="center")
        ax.set_xlim(0, 1.1)
        ax.invert_yaxis()
        ax.set_title(f"Answers on {result['rows']} {result['dataset']} {result['eval_split']} sentences")
        out.append(("Accuracy and agreement", svg_figure(fig, "accuracy")))
    return out


def _table(result: dict[str, Any]) -> str:
    head = (
        "<tr><th>path</th><th>p50</th><th>p95</th><th>p99</th><th>new conn. p50</th><th>new conn. p95</th>"
        "<th>new conn. p99</th><th>bytes up/down</th><th>failed</th><th>measured RTT</th></tr>"
    )
    d = result["device"]
    rows = [
        f"<tr><td>device (this host)</td><td>{_ms(d['warm']['p50_ms'])}</td><td>{_ms(d['warm']['p95_ms'])}</td>"
        f"<td>{_ms(d['warm']['p99_ms'])}</td><td colspan=3>load + first answer: {_ms(d['cold']['p50_ms'])}</td>"
        "<td>0 / 0</td><td>0</td><td>-</td></tr>"
    ]
    for n in result["networks"]:
        name = html.escape(n["profile"]["name"])
        if "skipped" in n:
            rows.append(f"<tr><td>{name}</td><td colspan=9>{html.escape(n['skipped'])}</td></tr>")
            continue
        w, c = n["warm"], n["cold"]
        rows.append(
            f"<tr><td>{name}</td>"
            + "".join(f"<td>{_ms(x[k])}</td>" for x in (w, c) for k in ("p50_ms", "p95_ms", "p99_ms"))
            + f"<td>{_bytes(w['bytes_sent_mean'])} / {_bytes(w['bytes_received_mean'])}</td>"
            f"<td>{w['calls'] - w['answered'] + c['calls'] - c['answered']}</td>"
            f"<td>{_ms(n['link_measured']['rtt_ms_p50'])}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _sources(result: dict[str, Any]) -> str:
    items = []
    for n in result["networks"]:
        p = n["profile"]
        gaps = f" Gaps: {', '.join(p['gaps'])}." if p["gaps"] else ""
        items.append(
            f"<li><b>{html.escape(p['name'])}</b>: {html.escape(' ; '.join(p['sources']))}.{html.escape(gaps)}</li>"
        )
    items.append(f"<li><b>price</b>: {html.escape(result['cost']['price']['source'])}</li>")
    for d in result["energy"]["devices"]:
        if d["compute"]["gaps"]:
            items.append(
                f"<li><b>{html.escape(d['compute']['device'])}</b> energy gap: {', '.join(d['compute']['gaps'])} "
                "has no source (devices/*.toml)</li>"
            )
    return f"<ul>{''.join(items)}</ul>"


def _unsafe_text(s: str) -> str:
    """Plain text for HTML, with URLs defanged so the page makes no request and names no live link."""
    return html.escape(s.replace("https://", "").replace("http://", ""))


def write_compare_report(result: dict[str, Any], out: Path) -> None:
    """Write ``compare.json`` and ``report.html`` into the folder ``out``."""
    result = {**result, "summary": summary(result)}
    write_json(out / "compare.json", _json_safe(result))
    plots = "".join(f"<h2>{html.escape(t)}</h2>{svg}" for t, svg in _plots(result))
    findings = "".join(f"<li>{html.escape(line)}</li>" for line in result["summary"])
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeslm compare: device vs cloud</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222;line-height:1.4}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}svg{{display:block;max-width:100%;height:auto;margin:0.5em 0}}
.summary{{background:#f5f8fc;border-left:4px solid {DEVICE_COLOR};padding:0.5em 1.5em}}</style></head>
<body><h1>On-device vs cloud</h1>
<div class="summary"><h2>In short</h2><ul>{findings}</ul></div>
<p>Bundle <code>{html.escape(Path(result["bundle"]).name)}</code> against the cloud at
<code>{_unsafe_text(result["cloud_url"])}</code>{" over TLS" if result["tls"] else ""}, on {result["rows"]}
{html.escape(result["dataset"])} {html.escape(result["eval_split"])} sentences. Networks emulated by a delaying proxy on
loopback and checked by measuring them; bytes counted by the kernel at the client's socket.</p>
<h2>Latency and bytes</h2>{_table(result)}
{plots}
<h2>Sources and gaps</h2>{_unsafe_text_list(_sources(result))}
</body></html>
"""
    write_bytes(out / "report.html", doc.encode("utf-8"))


def _unsafe_text_list(s: str) -> str:
    return s.replace("https://", "").replace("http://", "")


def _json_safe(x: Any) -> Any:
    """nan becomes null, inf the string "inf": strict JSON."""
    if isinstance(x, float):
        return None if math.isnan(x) else "inf" if math.isinf(x) else x
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x
