"""``avn bench``'s printed report: rich tables of :mod:`gateway.bench_figures`, 80 columns wide.

Tables: throughput and latency with the ratios to naive; single client, cache hits and peak
memory; the mean of each pipeline step; per transfer syntax; then the goal figures as sentences,
the syntaxes left out (no encoder) and, for a timing store, the "untrained weights" label.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

from gateway.bench_figures import STEPS, BenchFigures, goal_figures, percentile, ratios_to_baseline


def fmt(value: float, digits: int = 0) -> str:
    """A figure for the tables: ``-`` for NaN."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def print_bench(console: Console, figures: Sequence[BenchFigures], context: Mapping) -> None:
    """Every table and the goal figures of one run."""
    label = context.get("store_label")
    if label:
        console.print(f"[bold yellow]{label}[/]: {context['store']} — model outputs are meaningless")
    for table in (
        latency_table(figures, context),
        client_table(figures),
        steps_table(figures),
        syntax_table(figures),
    ):
        console.print(table)
    for line in goal_lines(figures):
        console.print(line)
    for syntax, reason in context.get("syntaxes_left_out", {}).items():
        console.print(f"[yellow]not sent:[/] {syntax} ({reason})")
    if label:
        console.print(f"[bold yellow]{label}[/]")


def latency_table(figures: Sequence[BenchFigures], context: Mapping) -> Table:
    ratios = ratios_to_baseline(figures)
    title = (
        f"gRPC, cache off: {context['radiographs']} radiographs of {context['data']}, "
        f"{context['concurrency']} clients, {context['device']}"
    )
    table = Table(title=title + (f" — {context['store_label']}" if context.get("store_label") else ""))
    table.caption = "img/s: radiographs per second; ×thr, ×p50: throughput and p50 speed-up over naive"
    for column in ("config", "img/s", "p50 ms", "p95 ms", "p99 ms", "errors", "×thr", "×p50"):
        table.add_column(column, justify="right")
    for f in figures:
        ratio = ratios.get(f.configuration, {})
        table.add_row(
            f.configuration,
            fmt(f.throughput, 2),
            *(fmt(f.percentile_ms(q)) for q in (50, 95, 99)),
            str(f.errors),
            fmt(ratio.get("throughput", math.nan), 2),
            fmt(ratio.get("p50_speedup", math.nan), 2),
        )
    return table


def client_table(figures: Sequence[BenchFigures]) -> Table:
    table = Table(title="one client, cache hits, peak resident memory (MiB)")
    table.caption = (
        "1-client: sequential requests; hit p99: the same radiograph again, cache on; RSS: peaks "
        "(+ growth during this configuration; the gateway process keeps what earlier ones left)"
    )
    for column in ("config", "1-client p50", "hit p99 ms", "gateway RSS", "TS workers", "TS frontend"):
        table.add_column(column, justify="right")
    for f in figures:
        memory = f.memory_mb
        table.add_row(
            f.configuration,
            fmt(percentile([s.latency_ms for s in f.single_client], 50)),
            fmt(percentile([s.latency_ms for s in f.cache_hits], 99), 1),
            f"{fmt(memory.get('gateway', math.nan))} (+{fmt(growth_mb(memory))})",
            fmt(memory.get("torchserve_workers", math.nan)),
            fmt(memory.get("torchserve_frontend", math.nan)),
        )
    return table


def growth_mb(memory: Mapping[str, float]) -> float:
    """How much the gateway process grew during the configuration (peak − RSS at its start)."""
    return memory.get("gateway", math.nan) - memory.get("gateway_before", math.nan)


def steps_table(figures: Sequence[BenchFigures]) -> Table:
    table = Table(title="mean step time per radiograph, ms (server side)")
    table.add_column("config")
    for step in STEPS:
        table.add_column(step, justify="right")
    for f in figures:
        table.add_row(f.configuration, *(fmt(f.step_means_ms[step]) for step in STEPS))
    return table


def syntax_table(figures: Sequence[BenchFigures]) -> Table:
    table = Table(title="per transfer syntax, ms")
    table.caption = (
        "dec, tot: mean decode and total (server side) in the timed run; 1c dec: decode with one client; "
        "dec %: decode ÷ total; hit p99: the cache-hit run"
    )
    table.add_column("config", no_wrap=True)
    table.add_column("syntax", no_wrap=True)
    for column in ("n", "dec", "1c dec", "tot", "dec %", "hit p99"):
        table.add_column(column, justify="right")
    for f in figures:
        for syntax, row in f.per_syntax().items():
            table.add_row(
                f.configuration,
                syntax,
                str(row["requests"]),
                fmt(row["decode_mean_ms"]),
                fmt(row["single_client_decode_mean_ms"]),
                fmt(row["total_mean_ms"]),
                fmt(row["decode_share_pct"], 1),
                fmt(row["cache_hit_p99_ms"], 1),
            )
    return table


def goal_lines(figures: Sequence[BenchFigures]) -> list[str]:
    """The goal figures as sentences."""
    goals = goal_figures(figures)
    shares = ", ".join(f"{name} {fmt(value, 1)}%" for name, value in goals["decode_share_pct"].items())
    lines = [f"decode as % of a radiograph's total (server side): {shares}"]
    overhead = goals.get("torchserve_overhead_pct")
    if overhead:
        lines.append(
            "gateway overhead of torchserve over in-process: "
            f"single-client p50 {fmt(overhead['single_client_p50'], 1)}%, "
            f"p50 {fmt(overhead['p50'], 1)}%, time per radiograph (1/throughput) {fmt(overhead['throughput'], 1)}%"
        )
    return lines
