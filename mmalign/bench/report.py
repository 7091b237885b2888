"""Scores and reports: VBench-compatible results JSON, normalised scores, Quality/Semantic/Total,
radar and bar charts (matplotlib Agg, PNG), a self-contained HTML report and a leaderboard.

Normalisation and weights: Vchitect/VBench@45e79ec ``scripts/constant.py`` / ``scripts/cal_final_score.py``:
normalized = (raw − Min)/(Max − Min)·weight; Quality = Σ/6.5; Semantic = Σ/9;
Total = (4·Quality + 1·Semantic)/5. VBench counts a missing dimension as raw 0, which makes a headline
number nobody measured; here Quality/Semantic/Total are ``null`` unless all their dimensions were
measured, and the scores over the *present* dimensions only (each sum divided by the weights
present) are given beside them, clearly named ``*_present``, with the list of missing dimensions.
Every dimension names the backbone that made its number (``vbench:…`` or ``substitute:…``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmalign.bench.dimensions import DIMENSIONS, GENEVAL_TASKS, get_dimension
from mmalign.bench.runner import RunResult, decode
from mmalign.errors import InputError
from mmalign.fileio import atomic_write, atomic_write_json

#: dimension -> (Min, Max, weight, group)   (scripts/constant.py)
NORMALIZATION: dict[str, tuple[float, float, float, str]] = {
    "subject_consistency": (0.1462, 1.0, 1.0, "quality"),
    "background_consistency": (0.2615, 1.0, 1.0, "quality"),
    "temporal_flickering": (0.6293, 1.0, 1.0, "quality"),
    "motion_smoothness": (0.706, 0.9975, 1.0, "quality"),
    "dynamic_degree": (0.0, 1.0, 0.5, "quality"),
    "aesthetic_quality": (0.0, 1.0, 1.0, "quality"),
    "imaging_quality": (0.0, 1.0, 1.0, "quality"),
    "object_class": (0.0, 1.0, 1.0, "semantic"),
    "multiple_objects": (0.0, 1.0, 1.0, "semantic"),
    "human_action": (0.0, 1.0, 1.0, "semantic"),
    "color": (0.0, 1.0, 1.0, "semantic"),
    "spatial_relationship": (0.0, 1.0, 1.0, "semantic"),
    "scene": (0.0, 0.8222, 1.0, "semantic"),
    "appearance_style": (0.0009, 0.2855, 1.0, "semantic"),
    "temporal_style": (0.0, 0.364, 1.0, "semantic"),
    "overall_consistency": (0.0, 0.364, 1.0, "semantic"),
}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0


def normalize(dimension: str, raw: float) -> float:
    """(raw − Min)/(Max − Min)·weight."""
    lo, hi, w, _ = NORMALIZATION[dimension]
    return (raw - lo) / (hi - lo) * w


def vbench_scores(raw: dict[str, float | None], missing_as_zero: bool = False) -> dict[str, Any]:
    """Normalised dimensions and Quality/Semantic/Total as VBench computes them.

    Quality (Semantic, Total) is ``None`` unless every dimension of its group (both groups) is
    present; ``missing_as_zero=True`` gives VBench's own ``cal_final_score.py`` convention instead
    (a missing dimension counts as raw 0). ``*_present`` are the same scores over the measured
    dimensions only; ``missing`` lists the absent dimensions per group.
    """
    norm: dict[str, float] = {}
    sums = {"quality": 0.0, "semantic": 0.0}
    present = {"quality": [0.0, 0.0], "semantic": [0.0, 0.0]}  # [Σ normalized, Σ weight]
    missing: dict[str, list[str]] = {"quality": [], "semantic": []}
    for dim, (_, _, w, group) in NORMALIZATION.items():
        value = raw.get(dim)
        ok = value is not None and math.isfinite(value)
        sums[group] += normalize(dim, float(value) if ok else 0.0)
        if ok:
            norm[dim] = normalize(dim, float(value))
            present[group][0] += norm[dim]
            present[group][1] += w
        else:
            missing[group].append(dim)
    quality = sums["quality"] / 6.5 if missing_as_zero or not missing["quality"] else None
    semantic = sums["semantic"] / 9.0 if missing_as_zero or not missing["semantic"] else None
    qp = present["quality"][0] / present["quality"][1] if present["quality"][1] else None
    sp = present["semantic"][0] / present["semantic"][1] if present["semantic"][1] else None
    return {
        "normalized": norm,
        "quality": quality,
        "semantic": semantic,
        "total": _total(quality, semantic) if quality is not None and semantic is not None else None,
        "quality_present": qp,
        "semantic_present": sp,
        "total_present": _total(qp, sp) if qp is not None and sp is not None else (qp if sp is None else sp),
        "missing": missing,
    }


def _total(quality: float, semantic: float) -> float:
    """Total = (4·Quality + 1·Semantic)/5 (``scripts/cal_final_score.py``)."""
    return (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)


# ---------------------------------------------------------------------------------------------
# results


def _per_video(run: RunResult, dim: str) -> list[dict[str, Any]]:
    rows = []
    for rec in run.records:
        r = rec["dims"].get(dim)
        if r is None:
            continue
        row = {"video_path": rec["path"], **{k: v for k, v in r.items() if k not in ("num", "den")}}
        rows.append(row)
    return rows


def aggregate(run: RunResult) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for dim in run.dimensions:
        if dim in run.unavailable:
            out[dim] = None
            continue
        recs = [rec["dims"][dim] for rec in run.records if rec["dims"].get(dim) is not None]
        out[dim] = get_dimension(dim).aggregate(recs) if recs else None
    return out


def vbench_eval_results(run: RunResult, raw: dict[str, float | None]) -> dict[str, Any]:
    """VBench ``{name}_eval_results.json``: ``{dim: [aggregate, [{video_path, video_results, ...}]]}`` (``vbench/__init__.py::evaluate``)."""
    return {d: [raw[d], _per_video(run, d)] for d in run.dimensions if raw.get(d) is not None}


def dimension_backbones(run: RunResult, dim: str) -> list[dict[str, Any]]:
    """The backbones (one per required role, in role order) that made ``dim``'s numbers in ``run``."""
    cls = DIMENSIONS.get(dim)
    return [run.backbones[r] for r in cls.roles if run.backbones.get(r, {}).get("label")]


def build_results(run: RunResult) -> dict[str, Any]:
    raw = aggregate(run)
    scores = vbench_scores(raw)
    dims = {}
    for d in run.dimensions:
        cls = DIMENSIONS.get(d)
        used = dimension_backbones(run, d)
        n = sum(1 for rec in run.records if rec["dims"].get(d) is not None)
        failures = [{"path": rec["path"], "error": rec["failures"][d]} for rec in run.records if d in rec.get("failures", {})]
        status = "ok" if raw[d] is not None else ("unavailable" if d in run.unavailable else
                                                  "failed" if failures else "no videos")
        entry = {"raw": raw[d], "normalized": scores["normalized"].get(d), "group": cls.group, "status": status,
                 "n_videos": n, "backbone": ", ".join(b["label"] for b in used) or (None if cls.roles else "model-free"),
                 # a VBench dimension's number is comparable with VBench's leaderboard only from VBench's own models
                 "comparable_with_vbench": d in NORMALIZATION and all(b["origin"] == "vbench" for b in used),
                 "note": "; ".join(b["note"] for b in used if b.get("note"))}
        if d in run.unavailable:
            entry["reason"] = run.unavailable[d]
        if failures:
            entry["failures"] = failures
        dims[d] = entry
    geneval = [raw[t] for t in GENEVAL_TASKS if t in raw and raw[t] is not None]
    # VBench's Quality/Semantic/Total only mean something when the run has VBench dimensions
    summary = {k: v for k, v in scores.items() if k != "normalized"} if any(d in NORMALIZATION for d in run.dimensions) else {}
    if geneval:
        summary["geneval_overall"] = sum(geneval) / len(geneval)  # unweighted mean of task accuracies, as GenEval's overall
    return {
        "suite": run.suite.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dtype": run.dtype,
        "n_videos": len(run.records),
        "dimensions": dims,
        "scores": summary,
        "backbones": run.backbones,
        "skipped": run.skipped,
        "missing_files": run.missing,
    }


def score_lines(results: dict[str, Any]) -> list[str]:
    """The headline scores as text: Quality/Semantic/Total, or ``null`` with the missing dimensions and
    the partial ``*_present`` scores over the measured ones."""
    s = results["scores"]
    lines = []
    for k in ("quality", "semantic", "total", "geneval_overall"):
        if k not in s:
            continue
        if s[k] is not None:
            lines.append(f"{k}: {s[k]:.4f}")
            continue
        groups = ("quality", "semantic") if k == "total" else (k,)
        miss = [d for g in groups for d in s["missing"][g]]
        part = s.get(f"{k}_present")
        lines.append(f"{k}: null (missing {len(miss)}: {', '.join(miss)})"
                     + (f"; partial {k}_present over the measured dimensions: {part:.4f}" if part is not None else ""))
    return lines


# ---------------------------------------------------------------------------------------------
# charts


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _display_scores(results: dict[str, Any]) -> dict[str, float]:
    """Per-dimension score on a 0–1 display scale: normalised/weight for VBench dims, raw otherwise."""
    out = {}
    for d, e in results["dimensions"].items():
        if e["raw"] is None:
            continue
        out[d] = e["normalized"] / NORMALIZATION[d][2] if d in NORMALIZATION else float(e["raw"])
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def radar_chart(series: dict[str, dict[str, float]], title: str = "") -> bytes:
    """Radar (spider) PNG of one or more models over the union of their dimensions (0–1 scale)."""
    plt = _plt()
    dims = sorted({d for s in series.values() for d in s})
    if not dims:
        dims = ["(no dimension)"]
    angles = [2 * math.pi * i / len(dims) for i in range(len(dims))]
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(111, polar=True)
    for name, s in series.items():
        vals = [max(0.0, min(1.2, s.get(d, 0.0))) for d in dims]
        ax.plot(angles + angles[:1], vals + vals[:1], marker="o", label=name)
        ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.15)
    ax.set_xticks(angles)
    ax.set_xticklabels([d.replace("_", "\n") for d in dims], fontsize=7)
    ax.set_ylim(0, 1.0)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=7)
    return _png(fig)


def bar_chart(series: dict[str, dict[str, float]], title: str = "") -> bytes:
    """Grouped per-dimension bars (one group per dimension, one bar per model)."""
    plt = _plt()
    dims = sorted({d for s in series.values() for d in s})
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(dims) * n + 2), 4))
    for k, (name, s) in enumerate(series.items()):
        xs = [i + k * width for i in range(len(dims))]
        ax.bar(xs, [s.get(d, 0.0) for d in dims], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(dims))])
    ax.set_xticklabels(dims, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("score (0-1; VBench dims normalised)")
    ax.set_title(title)
    if n > 1:
        ax.legend(fontsize=8)
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# HTML


def _b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def thumbnail(path: str, modality: str = "video", frames: int = 4, height: int = 64) -> bytes | None:
    """A strip of up to ``frames`` evenly spaced frames as PNG (None if the file cannot be read)."""
    from PIL import Image

    try:
        x, _ = decode(path, modality)
    except Exception:  # noqa: BLE001 (a thumbnail is decoration: an unreadable file just gets none)
        return None
    idx = sorted({round(i * (x.shape[0] - 1) / max(frames - 1, 1)) for i in range(frames)})
    tiles = []
    for i in idx:
        arr = x[i].permute(1, 2, 0).numpy()
        im = Image.fromarray(arr)
        w = max(1, round(im.width * height / im.height))
        tiles.append(im.resize((w, height), Image.NEAREST if im.height < height else Image.BILINEAR))
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), height), (255, 255, 255))
    xoff = 0
    for t in tiles:
        strip.paste(t, (xoff, 0))
        xoff += t.width + 2
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    return buf.getvalue()


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, float)):
        return f"{x:.4f}" if math.isfinite(x) else str(x)
    return html.escape(str(x))


_CSS = """body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f3f3}.note{color:#a60;font-size:12px}
.missing{color:#b00}img{vertical-align:middle}h2{margin-top:28px}"""


def html_report(results: dict[str, Any], run: RunResult | None, charts: dict[str, bytes]) -> str:
    """A self-contained HTML page: scores, backbones, charts and best/worst thumbnails (all inline)."""
    e = html.escape
    s = results["scores"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mmalign bench: {e(results['suite'])}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Benchmark report: {e(results['suite'])}</h1>",
             (f"<p>{results['n_videos']} videos evaluated, {len(results['skipped'])} skipped, "
              f"{len(results['missing_files'])} expected files missing. Created {e(results['created'])}.</p>"),
             f"<p>Backbone compute dtype: {e(results.get('dtype', 'fp32'))}.</p>",
             "<h2>Scores</h2><table><tr><th>score</th><th>value</th></tr>"]
    for k, v in s.items():
        if k != "missing":
            parts.append(f"<tr><td>{e(k)}</td><td>{'null' if v is None else _fmt(v)}</td></tr>")
    parts.append("</table><p class='note'>" + "<br>".join(e(line) for line in score_lines(results) if "null" in line)
                 + "</p><p class='note'>quality/semantic/total follow VBench and are null unless all their dimensions "
                 "were measured; *_present are partial scores over the measured dimensions only. Numbers from a "
                 "<b>substitute:</b> backbone are not comparable with VBench's leaderboard.</p>")
    for name, png in charts.items():
        parts.append(f"<h2>{e(name)}</h2><img alt='{e(name)}' src='{_b64(png)}'>")
    parts.append("<h2>Dimensions</h2><table><tr><th>dimension</th><th>group</th><th>raw</th><th>normalized</th>"
                 "<th>videos</th><th>backbone</th><th>status / note</th><th>best</th><th>worst</th></tr>")
    for d, info in results["dimensions"].items():
        best = worst = ""
        if run is not None and info["raw"] is not None:
            rows = [(float(r["video_results"]), r["video_path"]) for r in _per_video(run, d)]
            if rows:
                rows.sort()
                for label, (val, path) in (("best", rows[-1]), ("worst", rows[0])):
                    png = thumbnail(path, run.suite.modality)
                    cell = (f"<img alt='{label}' src='{_b64(png)}'><br>" if png else "") + f"{e(Path(path).name)} ({val:.3f})"
                    if label == "best":
                        best = cell
                    else:
                        worst = cell
        status = e(info["status"]) + (f"<br><span class='note'>{e(info.get('reason', ''))}</span>" if info.get("reason") else "")
        if info.get("note"):
            status += f"<br><span class='note'>{e(info['note'])}</span>"
        cls = " class='missing'" if info["raw"] is None else ""
        cmp = "" if info["comparable_with_vbench"] or info["backbone"] is None else "<br><span class='note'>not comparable with VBench</span>"
        parts.append(f"<tr{cls}><td>{e(d)}</td><td>{e(info['group'])}</td><td>{_fmt(info['raw'])}</td>"
                     f"<td>{_fmt(info['normalized'])}</td><td>{info['n_videos']}</td><td>{_fmt(info['backbone'])}{cmp}</td>"
                     f"<td>{status}</td><td>{best}</td><td>{worst}</td></tr>")
    parts.append("</table><h2>Backbones</h2><table><tr><th>role</th><th>backbone</th><th>note</th></tr>")
    for role, info in results["backbones"].items():
        why = "; ".join(info.get("unavailable", []))
        parts.append(f"<tr><td>{e(role)}</td><td>{_fmt(info.get('label'))}</td>"
                     f"<td class='note'>{e(info.get('note', ''))}{'<br>' + e(why) if why else ''}</td></tr>")
    parts.append("</table>")
    if results["skipped"]:
        parts.append("<h2>Skipped files</h2><table><tr><th>file</th><th>reason</th></tr>")
        for sk in results["skipped"]:
            parts.append(f"<tr><td>{e(sk['path'])}</td><td>{e(sk['error'])}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run: RunResult, name: str | None = None, charts: bool = True) -> dict[str, Path]:
    """Write results.json, ``{name}_eval_results.json`` (VBench layout), radar/bars PNG and report.html."""
    out = run.out_dir
    name = name or "results_" + _dt.datetime.now().strftime("%Y-%m-%d-%H:%M:%S")
    results = build_results(run)
    raw = {d: e["raw"] for d, e in results["dimensions"].items()}
    paths = {"results": out / "results.json", "eval_results": out / f"{name}_eval_results.json"}
    atomic_write_json(paths["results"], results)
    atomic_write_json(paths["eval_results"], vbench_eval_results(run, raw))
    pngs: dict[str, bytes] = {}
    if charts:
        disp = {run.suite.name: _display_scores(results)}
        pngs = {"radar": radar_chart(disp, run.suite.name), "dimensions": bar_chart(disp, run.suite.name)}
        for k, png in pngs.items():
            paths[k] = out / f"{k}.png"
            atomic_write(paths[k], lambda tmp, png=png: Path(tmp).write_bytes(png))
    page = html_report(results, run, pngs)
    paths["html"] = out / "report.html"
    atomic_write(paths["html"], lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return paths


# ---------------------------------------------------------------------------------------------
# leaderboard


def _load_results(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read results {p}: {err}; pass results.json files or bench output folders") from err


def leaderboard(paths: Sequence[str | Path], out: str | Path, names: Sequence[str] | None = None) -> dict[str, Path]:
    """Compare several runs side by side: leaderboard.md/.json, grouped bars and radar PNG, leaderboard.html."""
    out = Path(out)
    runs = [_load_results(p) for p in paths]
    labels = list(names) if names else [Path(p).parent.name if Path(p).is_file() else Path(p).name for p in paths]
    labels = [f"{lab} ({i})" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]
    dims = list(dict.fromkeys(d for r in runs for d in r["dimensions"]))
    score_keys = list(dict.fromkeys(k for r in runs for k in r["scores"] if k != "missing"))
    order = sorted(range(len(runs)), key=lambda i: -(runs[i]["scores"].get("total_present") or -1e9))
    header = ["model", *score_keys, *dims]
    rows = [[labels[i], *[runs[i]["scores"].get(k) for k in score_keys],
             *[runs[i]["dimensions"].get(d, {}).get("raw") for d in dims]] for i in order]
    # which backbone made each number; a substitute's number is marked † (not comparable with VBench)
    made_by = [{d: runs[i]["dimensions"].get(d, {}).get("backbone") for d in dims} for i in order]
    subst = [{d for d in dims if d in NORMALIZATION and runs[i]["dimensions"].get(d, {}).get("raw") is not None
              and not runs[i]["dimensions"][d].get("comparable_with_vbench", False)} for i in order]

    def cell(v: Any, k: int, col: str) -> str:
        text = v if isinstance(v, str) else _fmt(v)
        return text + (" †" if col in subst[k] else "")

    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cell(v, k, col) for v, col in zip(row, header)) + " |" for k, row in enumerate(rows)]
    md += ["", "† made by a substitute backbone (not VBench's model or weights): not comparable with VBench's leaderboard.",
           "", "Backbones: " + "; ".join(f"{rows[k][0]}: " + ", ".join(f"{d}={b}" for d, b in made_by[k].items() if b)
                                         for k in range(len(rows)))]
    series = {labels[i]: _display_scores(runs[i]) for i in order}
    pngs = {"bars": bar_chart(series, "leaderboard"), "radar": radar_chart(series, "leaderboard")}
    paths = {"markdown": out / "leaderboard.md", "json": out / "leaderboard.json", "html": out / "leaderboard.html"}
    atomic_write(paths["markdown"], lambda tmp: Path(tmp).write_text("\n".join(md) + "\n"))
    atomic_write_json(paths["json"], {"header": header, "rows": rows, "backbones": made_by})
    for k, png in pngs.items():
        paths[k] = out / f"leaderboard_{k}.png"
        atomic_write(paths[k], lambda tmp, png=png: Path(tmp).write_bytes(png))
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    for k, row in enumerate(rows):
        table += "<tr>" + "".join(f"<td title='{html.escape(str(made_by[k].get(col) or ''))}'>{html.escape(cell(v, k, col))}</td>"
                                  for v, col in zip(row, header)) + "</tr>"
    table += ("</table><p class='note'>† made by a substitute backbone: not comparable with VBench's leaderboard "
              "(hover a cell for its backbone).</p>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mmalign leaderboard</title><style>{_CSS}</style>"
            f"</head><body><h1>Leaderboard</h1>{table}"
            + "".join(f"<h2>{k}</h2><img alt='{k}' src='{_b64(p)}'>" for k, p in pngs.items()) + "</body></html>")
    atomic_write(paths["html"], lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return paths
