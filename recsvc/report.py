"""Plain-text rendering of evaluation metrics, shared by `recsvc train` and `recsvc models show`."""

from __future__ import annotations


def fmt(value: float | None) -> str:
    """A metric with four decimals, or '-' where there is none."""
    return "-" if value is None else f"{value:.4f}"


def metrics_table(model: dict[str, float], popularity: dict[str, float]) -> str:
    """Model beside the popularity baseline, one metric a row, with the lift."""
    lines = [f"{'metric':<14}{'model':>10}{'popularity':>12}{'lift':>10}"]
    for name, value in model.items():
        base = popularity.get(name)
        lift = f"{(value / base - 1) * 100:+.0f}%" if base else "-"
        lines.append(f"{name:<14}{value:>10.4f}{fmt(base):>12}{lift:>10}")
    return "\n".join(lines)
