"""The SELMA table: per row (base, experts, joint, merges, multi-adapter) and column (each skill's
accuracy, their mean, faithfulness, reward), the held-out mean with a 95% bootstrap CI over items and
paired differences to base and to joint; written as ``results.json``, ``table.md`` and ``selma.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mmalign.fileio import atomic_write, atomic_write_json, atomic_write_text
from mmalign.stats import bootstrap_ci

MEAN_SKILL = "mean skill"


def mean_of_means_ci(groups: list[np.ndarray], n_resamples: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of the mean over groups of each group's mean: a percentile bootstrap that
    resamples the items of every group independently (the skills' held-out items are different prompts)."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.mean([g[rng.integers(0, len(g), (n_resamples, len(g)))].mean(1) for g in groups], axis=0)
    alpha = (1 - level) / 2
    return (float(np.mean([g.mean() for g in groups])), float(np.quantile(stats, alpha)),
            float(np.quantile(stats, 1 - alpha)))


def _columns(recipe: Any, sets: dict[str, Any]) -> dict[str, np.ndarray]:
    """Column -> per-item values of one row: each skill's pass (1/0) on its held-out set, faithfulness, reward."""
    from mmalign.align.selma import skill_values

    cols: dict[str, np.ndarray] = {}
    for name, skill in recipe.skills.items():
        s = sets[skill.heldout]
        values = skill_values(s["judge"], s["details"], recipe.check_of(name))
        cols[name] = np.array([float(v >= recipe.filter.threshold) for v in values if v is not None])
    cols["faithfulness"] = np.concatenate([np.asarray(s["judge"], float) for s in sets.values()])
    if all(s["reward"] is not None for s in sets.values()):
        cols["reward"] = np.concatenate([np.asarray(s["reward"], float) for s in sets.values()])
    return cols


def build_report(recipe: Any, evaluations: dict[str, dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """The table from each row's per-item evaluation (:func:`mmalign.align.selma.evaluate_row`)."""
    skills = list(recipe.skills)
    values = {row: _columns(recipe, sets) for row, sets in evaluations.items()}
    columns = [*skills, MEAN_SKILL, "faithfulness", *(["reward"] if "reward" in next(iter(values.values())) else [])]
    rows: dict[str, dict[str, Any]] = {}
    for row, cols in values.items():
        rows[row] = {}
        for col in columns:
            ref = {"base": values["base"], "joint": values.get("joint")}
            entry: dict[str, Any] = {}
            if col == MEAN_SKILL:
                entry["ci"] = mean_of_means_ci([cols[s] for s in skills], seed=seed)
                for name, other in ref.items():
                    if other is not None and row != name:
                        entry[f"delta_{name}"] = mean_of_means_ci([cols[s] - other[s] for s in skills], seed=seed)
                entry["n"] = int(sum(len(cols[s]) for s in skills))
            else:
                entry["ci"] = bootstrap_ci(cols[col], seed=seed)
                for name, other in ref.items():
                    if other is not None and row != name:
                        entry[f"delta_{name}"] = bootstrap_ci(cols[col] - other[col], seed=seed)
                entry["n"] = int(len(cols[col]))
            rows[row][col] = entry
    return {"columns": columns, "skills": skills, "rows": rows, "judge": recipe.filter.judge,
            "scorer": recipe.eval.scorer, "claim": _claim(rows, skills)}


def _claim(rows: dict[str, dict[str, Any]], skills: list[str]) -> dict[str, Any]:
    """SELMA's claim (merged experts keep each skill's gain better than joint training), as measured:
    each merge row's mean skill accuracy minus joint's, and each expert's gain over base on its own skill."""
    out: dict[str, Any] = {"expert_gain_on_own_skill": {s: rows[f"expert:{s}"][s]["delta_base"] for s in skills
                                                        if f"expert:{s}" in rows}}
    out["combined_minus_joint"] = {row: cells[MEAN_SKILL]["delta_joint"] for row, cells in rows.items()
                                   if (row.startswith("merge:") or row == "multi-adapter") and "delta_joint" in cells[MEAN_SKILL]}
    return out


def _fmt(col: str, x: tuple[float, float, float] | list[float]) -> str:
    if col == "reward":
        return f"{x[0]:.4f} [{x[1]:.4f}, {x[2]:.4f}]"
    return f"{100 * x[0]:.1f} [{100 * x[1]:.1f}, {100 * x[2]:.1f}]"


def markdown_table(report: dict[str, Any]) -> str:
    """The table as Markdown: one row per model, ``mean [95% CI]`` per column (accuracies in %)."""
    cols = report["columns"]
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row, cells in report["rows"].items():
        lines.append(f"| {row} | " + " | ".join(_fmt(c, cells[c]["ci"]) for c in cols) + " |")
    lines += ["", f"Δ {MEAN_SKILL} vs joint (95% CI, points): " + "; ".join(
        f"{row} {100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]"
        for row, d in report["claim"]["combined_minus_joint"].items())]
    return "\n".join(lines) + "\n"


def _short_fmt(col: str, x: tuple[float, float, float] | list[float]) -> str:
    if col == "reward":
        return f"{x[0]:.3f} ({x[1]:.3f}–{x[2]:.3f})"
    return f"{100 * x[0]:.1f} ({100 * x[1]:.0f}–{100 * x[2]:.0f})"


def print_report(report: dict[str, Any], console: Console) -> None:
    t = Table(title=f"SELMA on held-out prompts (judge {report['judge']}; accuracy in %, 95% bootstrap CIs)")
    t.add_column("row", no_wrap=True)
    for c in report["columns"]:
        t.add_column(c, justify="right")
    for row, cells in report["rows"].items():
        t.add_row(row, *(_short_fmt(c, cells[c]["ci"]) for c in report["columns"]))
    console.print(t)


def plot(report: dict[str, Any], path: Path) -> Path:
    """Grouped bars with CI whiskers: accuracies and faithfulness (left), reward (right, if measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(report["rows"])
    left = [c for c in report["columns"] if c != "reward"]
    panels = [left] + ([["reward"]] if "reward" in report["columns"] else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 + 1.4 * len(left) + 2 * (len(panels) - 1), 4.5),
                             gridspec_kw={"width_ratios": [len(p) for p in panels]}, squeeze=False)
    width = 0.8 / len(rows)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(rows), 2)))
    for ax, cols in zip(axes[0], panels):
        for i, row in enumerate(rows):
            ci = np.array([report["rows"][row][c]["ci"] for c in cols])
            x = np.arange(len(cols)) + (i - (len(rows) - 1) / 2) * width
            ax.bar(x, ci[:, 0], width, yerr=[ci[:, 0] - ci[:, 1], ci[:, 2] - ci[:, 0]], capsize=1.5, label=row,
                   color=colors[i], error_kw={"elinewidth": 0.6})
        ax.set_xticks(np.arange(len(cols)), cols)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("held-out accuracy / faithfulness")
    axes[0][0].set_ylim(0, 1.05)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"SELMA skill experts, joint training and merges (judge: {report['judge']}; 95% CIs)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out: Path) -> None:
    atomic_write_json(out / "results.json", report)
    atomic_write_text(out / "table.md", markdown_table(report))
    plot(report, out / "selma.png")


__all__ = ["build_report", "markdown_table", "print_report", "plot", "write_report", "mean_of_means_ci"]
