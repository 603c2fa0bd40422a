"""
Is A3C worth it over SB3's A2C on this machine? ``python -m sb3_async.compare`` trains each
algorithm for each seed with rl-zoo3's settings and writes CSVs, plots and a Markdown table.
See docs/results.md.
"""

from sb3_async.compare.harness import RunResult, RunSpec, plan_runs, run_all, run_one, validate
from sb3_async.compare.report import summary_table, write_report

__all__ = ["RunResult", "RunSpec", "plan_runs", "run_all", "run_one", "summary_table", "validate", "write_report"]
