"""
Is A3C worth it over SB3's A2C on this machine? ``python -m sb3_async.compare`` trains each
algorithm for each seed with rl-zoo3's settings and writes CSVs, plots and a Markdown table.
See docs/results.md.
"""

from typing import TYPE_CHECKING, Any

from sb3_async.compare.harness import RunResult, RunSpec, plan_runs, run_all, run_one, validate

if TYPE_CHECKING:
    from sb3_async.compare.report import summary_table, write_report

__all__ = ["RunResult", "RunSpec", "plan_runs", "run_all", "run_one", "summary_table", "validate", "write_report"]


def __getattr__(name: str) -> Any:
    # The report's statistics and plotting libraries take most of a second to import, and every run
    # trains in a fresh process that imports this package for run_one: they load only when asked for.
    if name in ("summary_table", "write_report"):
        from sb3_async.compare import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
