"""
Files of a comparison: ``runs.csv`` (one row per run), ``curves.csv`` (every training episode of
every run), ``results.md`` (the summary table, computed from runs.csv only) and PNG plots of the
learning curves on a steps axis and a time axis (and, for a scaling sweep, ``scaling.png``).

Aggregates across seeds use rliable: the interquartile mean (IQM) with a 95% stratified-bootstrap
confidence interval, as Agarwal et al. (2021) recommend for few runs.
"""

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from rliable import library as rly
from scipy import stats

from sb3_async.compare.harness import RunResult

BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
CURVE_POINTS = 60
CURVE_SMOOTHING = 20  # episodes in the rolling mean of a learning curve


def result_frames(results: list[RunResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of runs.csv and of curves.csv for ``results``."""
    runs = pd.DataFrame([result.row() for result in results])
    curves = pd.DataFrame(
        [
            {
                "label": r.spec.label,
                "algo": r.spec.algo,
                "seed": r.spec.seed,
                "step": step,
                "seconds": seconds,
                "episode_reward": reward,
            }
            for r in results
            for step, seconds, reward in r.episodes
        ],
        columns=["label", "algo", "seed", "step", "seconds", "episode_reward"],
    )
    return runs, curves


def read_comparison(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """runs.csv, curves.csv and the commands that trained them (command.txt, one per line) of ``out``."""
    commands = (out / "command.txt").read_text().splitlines() if (out / "command.txt").exists() else []
    # round_trip: pandas' default float parser can be off by an ulp, and resuming rewrites the earlier rows.
    runs, curves = (pd.read_csv(out / name, float_precision="round_trip") for name in ("runs.csv", "curves.csv"))
    return runs, curves, [line for line in commands if line.strip()]


def iqm_with_ci(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IQM over runs (axis 0) for each column of ``scores`` [runs, points], and its 95% CI [2, points]."""
    score_dict = {"x": scores[:, None, :]}  # rliable's layout: [runs, tasks, points]

    def iqm(matrix: np.ndarray) -> np.ndarray:
        # rliable's aggregate_iqm (a 25%-trimmed mean over runs and tasks), for every point at once.
        return stats.trim_mean(matrix.reshape(-1, matrix.shape[-1]), proportiontocut=0.25, axis=0)

    # A seeded bootstrap: the same CSV always gives the same intervals. rliable hands random_state
    # to arch, which warns that it prefers a Generator; rliable offers no other way to seed it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
        estimates, intervals = rly.get_interval_estimates(
            score_dict, iqm, reps=BOOTSTRAP_REPS, random_state=np.random.RandomState(BOOTSTRAP_SEED)
        )
    return estimates["x"], intervals["x"]


def _median_and_range(values: pd.Series, fmt: str) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    return f"{values.median():{fmt}} ({values.min():{fmt}}–{values.max():{fmt}})"


def _median(group: pd.DataFrame, column: str) -> str:
    """The column's median, or a dash for runs recorded before the column existed."""
    return f"{group[column].median():.0f}" if column in group and group[column].notna().any() else "–"


def summary_table(runs: pd.DataFrame) -> str:
    """The Markdown table of results.md, computed from runs.csv's columns only."""
    lines = [
        "| algo | final score, IQM [95% CI] | final score, median (range) | steps to threshold, median (range) | "
        "seconds to threshold, median (range) | solved | env steps/s, median (range) | CPU cores used | "
        "peak memory (PSS), MB | peak summed RSS, MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, group in runs.groupby("label", sort=False):
        estimate, interval = iqm_with_ci(group["final_score"].to_numpy()[:, None])
        solved = group["steps_to_threshold"].notna()
        lines.append(
            f"| {label} | {estimate[0]:.1f} [{interval[0, 0]:.1f}, {interval[1, 0]:.1f}] "
            f"| {_median_and_range(group['final_score'], '.1f')} "
            f"| {_median_and_range(group['steps_to_threshold'], ',.0f')} "
            f"| {_median_and_range(group['seconds_to_threshold'], '.1f')} "
            f"| {solved.sum()}/{len(group)} "
            f"| {_median_and_range(group['fps'], ',.0f')} "
            f"| {group['cpu_cores'].median():.2f} | {_median(group, 'peak_pss_mb')} | {group['peak_rss_mb'].median():.0f} |"
        )
    return "\n".join(lines)


def _curve_on_grid(episodes: pd.DataFrame, axis: str, grid: np.ndarray) -> np.ndarray:
    """
    The run's smoothed episode return, as a step function of ``axis``, read at ``grid``: NaN before
    its first episode and after its last, so a run is never extended past its own end.
    """
    smoothed = episodes["episode_reward"].rolling(CURVE_SMOOTHING, min_periods=1).mean().to_numpy()
    positions = np.searchsorted(episodes[axis].to_numpy(), grid, side="right") - 1
    inside = (positions >= 0) & (grid <= episodes[axis].iloc[-1])
    return np.where(inside, smoothed[np.clip(positions, 0, None)], np.nan)


def plot_curves(curves: pd.DataFrame, axis: str, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    grid = np.linspace(0, curves[axis].max(), CURVE_POINTS)[1:]
    for label, runs in curves.groupby("label", sort=False):
        matrix = np.stack([_curve_on_grid(run, axis, grid) for _, run in runs.groupby("seed")])
        valid = ~np.isnan(matrix).any(axis=0)  # where every seed has data
        if not valid.any():
            continue
        estimate, interval = iqm_with_ci(matrix[:, valid])
        ax.plot(grid[valid], estimate, label=f"{label} ({len(matrix)} seeds)")
        ax.fill_between(grid[valid], interval[0], interval[1], alpha=0.25)
    ax.set_xlabel({"step": "env steps", "seconds": "wall-clock seconds"}[axis])
    ax.set_ylabel(f"training episode return (mean of {CURVE_SMOOTHING})")
    ax.set_title(f"{title}: IQM and 95% CI over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _algo_with_variant(runs: pd.DataFrame) -> pd.Series:
    """``a3c``, or ``a3c:update_mode=hogwild`` for a variant (CSVs written before variants have no such column)."""
    if "variant" not in runs:
        return runs["algo"]
    variant = runs["variant"].fillna("").astype(str)
    return runs["algo"].where(variant == "", runs["algo"] + ":" + variant)


def plot_scaling(runs: pd.DataFrame, path: Path, title: str) -> None:
    """Throughput and time-to-threshold speed-up against the number of workers, with the ideal line."""
    fig, (throughput_ax, speedup_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for algo, group in runs.groupby(_algo_with_variant(runs), sort=False):
        by_workers = group.groupby("n_workers")
        workers = np.array(sorted(by_workers.groups), dtype=float)
        fps = by_workers["fps"].median().reindex(workers).to_numpy()
        throughput_ax.plot(workers, fps, "o-", label=f"{algo} (median)")
        throughput_ax.plot(workers, fps[0] * workers / workers[0], "k--", label="ideal (linear)")
        seconds = by_workers["seconds_to_threshold"].median().reindex(workers).to_numpy()
        speedup_ax.plot(workers, seconds[0] / seconds, "o-", label=f"{algo} (median)")
        speedup_ax.plot(workers, workers / workers[0], "k--", label="ideal (linear)")
    throughput_ax.set(xlabel="workers", ylabel="env steps / s", title="throughput")
    speedup_ax.set(xlabel="workers", ylabel="speed-up in time to threshold", title="time-to-threshold speed-up")
    for ax in (throughput_ax, speedup_ax):
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csvs(
    results: list[RunResult],
    out: Path,
    commands: list[str],
    earlier: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """
    Write runs.csv, curves.csv and command.txt for ``results``, after ``earlier``'s runs and curves
    when a comparison is resumed. Returns the two tables as written.
    """
    out.mkdir(parents=True, exist_ok=True)
    runs, curves = result_frames(results)
    if earlier is not None:
        runs = pd.concat([earlier[0], runs], ignore_index=True)
        curves = pd.concat([earlier[1], curves], ignore_index=True)
    runs.to_csv(out / "runs.csv", index=False)
    curves.to_csv(out / "curves.csv", index=False)
    (out / "command.txt").write_text("".join(command + "\n" for command in commands))
    return runs, curves


def write_report(
    results: list[RunResult],
    out: Path,
    commands: list[str],
    earlier: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> str:
    """The CSVs (see :func:`write_csvs`), then results.md and the plots. Returns the summary table."""
    runs, curves = write_csvs(results, out, commands, earlier)
    return write_report_from_csvs(runs, curves, out, commands)


def write_report_from_csvs(runs: pd.DataFrame, curves: pd.DataFrame, out: Path, commands: list[str]) -> str:
    """results.md and the plots from the two CSVs (``--report-only`` redraws them without training)."""
    spec = runs.iloc[0]
    title = f"{spec.env_id}, {spec.timesteps:,} steps"
    plot_curves(curves, "step", out / "curves_steps.png", title)
    plot_curves(curves, "seconds", out / "curves_time.png", title)
    figures = ["curves_steps.png", "curves_time.png"]
    if runs["n_workers"].notna().any():
        plot_scaling(runs, out / "scaling.png", title)
        figures.append("scaling.png")
    table = summary_table(runs)
    text = (
        f"# {title}\n\n"
        + "".join(f"`{command}`\n\n" for command in commands)
        + f"Threshold {spec.threshold:g}: the first time the mean of the last {spec.window} training episodes reaches it. "
        f"Final score: deterministic policy over {spec.eval_episodes} evaluation episodes after training.\n\n"
        f"{table}\n\n" + "".join(f"![{name}]({name})\n" for name in figures)
    )
    (out / "results.md").write_text(text)
    return table
