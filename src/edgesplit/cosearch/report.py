"""A markdown report page for one co-search: the front per device and the grow-and-prune history.

Owns `write_report`. Reads the search and refine result files; pure (no torch).
"""

from __future__ import annotations

from pathlib import Path

from edgesplit.core.schema import read_json_file
from edgesplit.cosearch.refine import RefineResult
from edgesplit.cosearch.search import SearchResult

__all__ = ["write_report"]


def write_report(search_path: Path, refine_path: Path | None, out_path: Path) -> Path:
    """Write `out_path` (markdown) summarising the search (and the refine step if given)."""
    search = read_json_file(SearchResult, search_path)
    lines = [
        f"# Co-search report: {search.task}, {search.method}, {search.budget} evaluations",
        "",
        f"Devices: {', '.join(search.devices)}. Constraints: {search.constraints.model_dump()}.",
        f"Feasible trials: {sum(t.feasible for t in search.trials)} of {len(search.trials)}; "
        f"front: {len(search.pareto)}; hypervolume {search.hypervolume:.4f} "
        "(objectives 1-accuracy, log10 latency/energy/peak power; "
        f"reference {list(search.reference)}).",
        "",
        f"![Pareto per device]({Path(search_path).with_suffix('.png').name})",
        "",
        "## Front per device",
        "",
        "| device | config | accuracy | latency s | energy J | peak W | memory MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t in sorted(search.pareto_trials(), key=lambda t: (t.device, t.latency_s)):
        lines.append(
            f"| {t.device} | {t.config.describe()} | {t.accuracy:.3f} | {t.latency_s:.4g} | "
            f"{t.energy_j:.4g} | {t.peak_power_w:.3g} | {t.memory_bytes / 1e6:.0f} |"
        )
    if refine_path is not None and Path(refine_path).is_file():
        refine = read_json_file(RefineResult, refine_path)
        lines += [
            "",
            f"## Grow-and-prune on {refine.settings.device}",
            "",
            f"Start: {refine.start.config.describe()} — accuracy {refine.start.accuracy:.3f}, "
            f"latency {refine.start.latency_s:.4g} s. Final: {refine.final.config.describe()} — "
            f"accuracy {refine.final.accuracy:.3f}, latency {refine.final.latency_s:.4g} s.",
            "",
            "| step | action | config | accuracy | latency s | kept | why |",
            "|---:|---|---|---:|---:|---|---|",
        ]
        for s in refine.steps:
            lines.append(
                f"| {s.index} | {s.action} | {s.config.describe()} | {s.accuracy:.3f} | "
                f"{s.latency_s:.4g} | {'yes' if s.accepted else 'no'} | {s.reason} |"
            )
        if refine.still_improving:
            lines += [
                "",
                f"Stopped at the step limit ({refine.settings.num_steps}) right after a kept "
                "edit: more steps (`--steps`) may prune further.",
            ]
    lines += [
        "",
        "Latency, energy and peak power are predictions (ProTran-trained per-device predictors; "
        "the host's energy and power are modelled, see docs/cosearch.md). Accuracy is from a short "
        "real training of a width-reduced proxy.",
        "",
    ]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines))
    return out_path
