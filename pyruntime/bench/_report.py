"""Rendering of bench results: terminal tables, a markdown summary and the
optional matplotlib plots. Everything here reads the JSON-able result dict
that ``__main__`` builds, so a saved JSON file can be re-rendered."""

from __future__ import annotations

import math
from typing import Any

# ------------------------------------------------------------------ numbers


def _sig(x: float, digits: int = 3) -> str:
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    mag = int(math.floor(math.log10(abs(x))))
    decimals = max(0, digits - 1 - mag)
    return f"{x:.{decimals}f}"


def fmt_value(v: float | None, unit: str, label: str | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "s":
        if v < 1e-3:
            return f"{_sig(v * 1e6)} us"
        if v < 1:
            return f"{_sig(v * 1e3)} ms"
        return f"{_sig(v)} s"
    if unit == "B/s":
        if v >= 1e8:
            return f"{_sig(v / 1e9)} GB/s"
        return f"{_sig(v / 1e6)} MB/s"
    if unit == "B":
        if v >= 1e6:
            return f"{_sig(v / 1e6)} MB"
        if v >= 1e3:
            return f"{_sig(v / 1e3)} kB"
        return f"{int(v)} B"
    if unit == "1/s":
        lab = label or "/s"
        if v >= 1e6:
            return f"{_sig(v / 1e6)} M {lab}"
        if v >= 1e4:
            return f"{_sig(v / 1e3)} k {lab}"
        return f"{_sig(v)} {lab}"
    if unit == "x":
        return f"{_sig(v)}x"
    if unit == "%":
        return f"{v:.1f} %"
    return f"{_sig(v)} {label or unit}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return ""
    return f"{_sig(r)}x"


def _spread(v: dict[str, Any]) -> str:
    if "spread" not in v or len(v.get("rounds", [])) < 2:
        return ""
    return f"{v['spread'] * 100:.1f}%"


# ------------------------------------------------------------------- tables
HEAD = ("figure", "impl", "median", "spread", "p99", "ours vs it")


def metric_rows(m: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    first = True
    for impl, v in m["values"].items():
        title = m["title"] if first else ""
        first = False
        if "median" not in v:
            status = v.get("status", "n/a")
            rows.append((title, impl, status, "", "", v.get("reason", "")))
            continue
        med = fmt_value(v["median"], m["unit"], m["label"])
        p99 = fmt_value(v["p99"], m["unit"], m["label"]) if "p99" in v else ""
        ratio = "(ours)" if impl == m["ours"] else fmt_ratio(m["ratios"].get(impl))
        rows.append((title, impl, med, _spread(v), p99, ratio))
    return rows


def goal_measured(m: dict[str, Any]) -> str:
    """What the goal was judged on: the ratio to the peer, or ours' median."""
    g = m.get("goal") or {}
    if g.get("kind") == "ratio":
        r = m["ratios"].get(g["peer"])
        return f"{fmt_ratio(r)} vs {g['peer']}" if r is not None else "-"
    ours = m["values"].get(m["ours"] or "", {})
    return fmt_value(ours.get("median"), m["unit"], m["label"]) if "median" in ours else "-"


def _goal_line(m: dict[str, Any]) -> str | None:
    g = m.get("goal")
    if not g:
        return None
    met = g.get("met")
    mark = {True: "MET", False: "NOT MET", None: "n/a"}[met]
    return f"goal ({m['title']}): {g['text']} -> {mark} ({goal_measured(m)})"


def render_table(rows: list[tuple[str, ...]], head: tuple[str, ...] = HEAD) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    def line(r: tuple[str, ...]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    out = [line(head), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def render_suite(s: dict[str, Any]) -> str:
    title = f"== {s['suite']} "
    if s["status"] != "ok":
        return f"{title}==\n{s['status']}: {s.get('reason') or ''}\n"
    lines = [f"{title}({s.get('seconds', 0):.1f} s{_noise(s)}) =="]
    rows: list[tuple[str, ...]] = []
    for m in s["metrics"]:
        rows += metric_rows(m)
    if rows:
        lines.append(render_table(rows))
    for m in s["metrics"]:
        g = _goal_line(m)
        if g:
            lines.append(g)
    for m in s["metrics"]:
        if m.get("note"):
            lines.append(f"note ({m['title']}): {m['note']}")
    for note in s.get("extra", {}).get("notes", []):
        lines.append(f"note: {note}")
    if s.get("method"):
        lines.append(f"how: {s['method']}")
    return "\n".join(lines) + "\n"


def _noise(s: dict[str, Any]) -> str:
    """", other processes: 0.05 cores" (the average CPU others took)."""
    cpu = s.get("cpu") or {}
    if cpu.get("others_cores") is not None:
        return f", other processes used {cpu['others_cores']:.2f} cores on average"
    load = s.get("loadavg_start")
    return f", load average {load[0]:.2f} at start" if load else ""


def render_footer(res: dict[str, Any]) -> str:
    end = res["machine"].get("loadavg_end")
    text = f"total {res.get('seconds', 0):.1f} s{_noise(res)}"
    if end:
        text += f"; load average at end: {' '.join(f'{x:.2f}' for x in end)}"
    return text


def render_header(res: dict[str, Any]) -> str:
    m = res["machine"]
    v = m["versions"]
    vers = ", ".join(f"{k} {v[k] or 'n/a'}" for k in ("triton", "torch", "lz4", "xxhash", "cffi"))
    load = " ".join(f"{x:.2f}" for x in m["loadavg_start"])
    lines = [
        f"pyruntime bench {res['date']}  ({'quick' if res['settings']['quick'] else 'full'} run)",
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{(m['memory_bytes'] or 0) / 2**30:.0f} GiB, {m['os']}",
        f"python {m['python']}; pyruntime {v['pyruntime']} (backend {m['backend']}); {vers}",
        f"load average at start: {load}",
        f"method: {res['method']}",
        "'ours vs it' = how many times better ours is than that peer (above 1: ours wins); "
        "spread = (max - min) / median over rounds",
    ]
    return "\n".join(lines) + "\n"


def render_text(res: dict[str, Any]) -> str:
    parts = [render_header(res)]
    for s in res["suites"].values():
        parts.append(render_suite(s))
    if res["machine"].get("loadavg_end"):
        parts.append(render_footer(res) + "\n")
    return "\n".join(parts)


# ----------------------------------------------------------------- markdown
def _md_table(rows: list[tuple[str, ...]], head: tuple[str, ...] = HEAD) -> str:
    def esc(c: str) -> str:
        return str(c).replace("|", "\\|")
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(res: dict[str, Any], title: str | None = None) -> str:
    m = res["machine"]
    v = m["versions"]
    lines = [f"# {title or 'pyruntime bench ' + res['date']}", ""]
    lines += [
        f"- date: {res['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{(m['memory_bytes'] or 0) / 2**30:.0f} GiB RAM, {m['os']}",
        f"- Python {m['python']}; pyruntime {v['pyruntime']} (backend `{m['backend']}`); "
        + ", ".join(f"{k} {v[k] or 'n/a'}" for k in ("triton", "torch", "lz4", "xxhash", "cffi")),
        f"- load average (1/5/15 min) at start: {' '.join(f'{x:.2f}' for x in m['loadavg_start'])}"
        + (f"; at end: {' '.join(f'{x:.2f}' for x in m['loadavg_end'])}" if m.get("loadavg_end") else ""),
        f"- command: `{res.get('command', 'python -m pyruntime.bench')}` ({res.get('seconds', 0):.0f} s"
        f"{_noise(res)})",
        f"- method: {res['method']}",
        "- *ours vs it*: how many times better ours is than that peer (above 1: ours wins); "
        "*spread*: (max - min) / median over rounds.",
        "",
    ]
    goals = []
    for s in res["suites"].values():
        lines.append(f"## {s['suite']}")
        lines.append("")
        lines += [f"{s.get('seconds', 0):.0f} s{_noise(s)}.", ""]
        if s["status"] != "ok":
            lines += [f"{s['status']}: {s.get('reason') or ''}", ""]
            continue
        rows: list[tuple[str, ...]] = []
        for mt in s["metrics"]:
            rows += metric_rows(mt)
            g = mt.get("goal")
            if g:
                goals.append((s["suite"], mt, g))
        lines += [_md_table(rows), ""]
        for mt in s["metrics"]:
            if mt.get("note"):
                lines.append(f"- {mt['title']}: {mt['note']}")
        for note in s.get("extra", {}).get("notes", []):
            lines.append(f"- {note}")
        if s.get("method"):
            lines.append(f"- how: {s['method']}")
        lines.append("")
    if goals:
        lines += ["## Goals", "", "| suite | figure | goal | measured | result |",
                  "|---|---|---|---|---|"]
        for suite, mt, g in goals:
            mark = {True: "met", False: "**not met**", None: "n/a"}[g.get("met")]
            lines.append(f"| {suite} | {mt['title']} | {g['text']} | {goal_measured(mt)} | {mark} |")
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------- plots
def write_plots(res: dict[str, Any], stem: str) -> list[str]:
    """PNG plots drawn from the result dict (so a saved JSON can be
    re-plotted); silently nothing without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    written = []
    comp = res["suites"].get("compile")
    if comp and comp["status"] == "ok" and comp["extra"].get("curve"):
        curve = comp["extra"]["curve"]
        ws = sorted({p["workers"] for pts in curve.values() for p in pts})
        fig, ax = plt.subplots(figsize=(6, 4))
        for impl, pts in curve.items():
            if pts:
                ax.plot([p["workers"] for p in pts], [p["kernels_per_s"] for p in pts],
                        marker="o", label=impl)
        serial = comp["extra"].get("serial_kernels_per_s")
        if serial and ws:
            ax.plot(ws, [serial * w for w in ws], "k--", lw=1, label="ideal: serial x W")
            ax.plot(ws, [serial * w / 1.1 for w in ws], "k:", lw=1, label="goal: serial x W / 1.1")
        ax.set_xlabel("workers (W)")
        ax.set_ylabel("kernels / s")
        ax.set_title(f"Triton compile scaling: {comp['extra'].get('kernels')} kernels for "
                     f"{comp['extra'].get('target')}")
        ax.set_xticks(ws)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = stem + "-compile-scaling.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    pool = res["suites"].get("pool")
    hist = pool["extra"].get("latency_histogram_s") if pool and pool["status"] == "ok" else None
    if hist:
        fig, ax = plt.subplots(figsize=(6, 4))
        for impl, h in hist.items():
            if h.get("counts"):
                edges_us = [e * 1e6 for e in h["edges"]]
                ax.stairs(h["counts"], edges_us, lw=1.5, label=f"{impl} (n={sum(h['counts'])})")
        ax.set_xscale("log")
        ax.set_xlabel("no-op round trip (us)")
        ax.set_ylabel("count")
        ax.set_title("pool no-op round-trip latency, 2 workers")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = stem + "-pool-latency.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
