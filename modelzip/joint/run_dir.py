"""A run directory of automatic compression: ``points.json``, ``report.json``, ``sensitivity.json``,
``recipe.yaml``, ``auto.json`` and plots (the shared RUN_DIR layout that reports read)."""

from __future__ import annotations

from pathlib import Path

from modelzip.joint.auto import AutoResult


def write_run_dir(result: AutoResult, run_dir: str | Path) -> list[Path]:
    """Write ``points.json``, ``trail.json`` (every candidate built: cost, accuracy, deployed
    latency), ``report.json``, ``sensitivity.json`` (greedy), ``recipe.yaml``,
    ``auto.json`` and the plots (``pareto.png``, ``sensitivity-METHOD.png``) into ``run_dir``,
    each atomically."""
    from modelzip.core.atomic import write_json
    from modelzip.joint.pareto import plot_pareto
    from modelzip.joint.sensitivity import plot_sensitivity
    from modelzip.recipe import Recipe

    run_dir = Path(run_dir)
    written = [run_dir / "points.json", run_dir / "recipe.yaml", run_dir / "auto.json"]
    written.append(run_dir / "trail.json")
    write_json(written[-1], {"candidates": result.trail, "unavailable": result.unavailable})
    if result.report is not None:
        written.append(run_dir / "report.json")
        write_json(written[-1], result.report.to_dict())
    write_json(written[0], result.points_document())
    Recipe.of(result.recipe).save(written[1])
    write_json(written[2], result.summary())
    if result.sensitivity is not None:
        write_json(run_dir / "sensitivity.json", result.sensitivity.to_dict())
        written.append(run_dir / "sensitivity.json")
        written.extend(plot_sensitivity(result.sensitivity, run_dir))
    written.append(
        plot_pareto(
            result.points,
            run_dir / "pareto.png",
            cost_label=f"{result.budget.kind} ({result.budget.unit})",
            limit=result.budget.limit,
            baseline=(result.baseline_cost, result.baseline_accuracy),
            chosen=result.chosen,
            title=f"{result.model_name}: budget {result.budget.describe()}",
        )
    )
    return written
