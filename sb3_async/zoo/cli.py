"""``python -m sb3_async.zoo <script> [rl-zoo3 flags]``: rl-zoo3's scripts, with sb3_async's algorithms registered."""

import argparse
import sys
from typing import Any
from unittest import mock

import rl_zoo3.train
from rl_zoo3.enjoy import enjoy
from rl_zoo3.plots import all_plots, plot_from_file, plot_train

from sb3_async.zoo.experiment import AsyncExperimentManager, register
from sb3_async.zoo.time_objective import OBJECTIVES


def objective_parser() -> argparse.ArgumentParser:
    """The flags ``train`` takes beside rl-zoo3's: the objective of ``-optimize``."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    objective = parser.add_argument_group("sb3_async: what -optimize maximizes")
    objective.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="score",
        help="score: rl-zoo3's (the evaluation after -n steps); time: seconds until the 100-episode training mean "
        "reaches --target-score, misses ranked below by their final mean (sb3_async/zoo/time_objective.py)",
    )
    objective.add_argument("--target-score", type=float, default=None, help="default: the env's reward threshold")
    objective.add_argument("--time-budget", type=float, default=300.0, help="seconds per trial (default: 300)")
    objective.add_argument(
        "--hold-episodes",
        type=int,
        default=100,
        help="after reaching the target, episodes whose mean must reach it too, or the trial is a miss (default: 100)",
    )
    return parser


def train() -> None:
    parser = objective_parser()
    ours, rest = parser.parse_known_args(sys.argv[1:])
    if "-h" in rest or "--help" in rest:
        parser.print_help()  # then rl-zoo3's own help, which ends the process

    def manager(*args: Any, **kwargs: Any) -> AsyncExperimentManager:
        # The manager checks its settings; on the command line a bad one is a usage error, not a traceback.
        try:
            return AsyncExperimentManager(
                *args,
                objective=ours.objective,
                target_score=ours.target_score,
                time_budget=ours.time_budget,
                hold_episodes=ours.hold_episodes,
                **kwargs,
            )
        except ValueError as error:
            parser.error(str(error))

    # rl-zoo3's train() builds its ExperimentManager by name; ours only adds to it.
    with mock.patch.object(rl_zoo3.train, "ExperimentManager", manager), mock.patch.object(sys, "argv", [sys.argv[0], *rest]):
        rl_zoo3.train.train()


SCRIPTS = {
    "train": train,
    "enjoy": enjoy,
    "plot": plot_train,
    "plot_train": plot_train,
    "plot_from_file": plot_from_file,
    "all_plots": all_plots,
}


def main(argv: list[str] | None = None) -> None:
    """Run one of rl-zoo3's scripts (``train``, ``enjoy``, ``plot``/``plot_train``, ``plot_from_file``, ``all_plots``)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SCRIPTS:
        raise SystemExit(f"usage: sb3-async-zoo {{{','.join(SCRIPTS)}}} [rl-zoo3 flags]; got {argv[:1]}")
    register()
    script, *flags = argv
    with mock.patch.object(sys, "argv", [f"sb3-async-zoo {script}", *flags]):
        SCRIPTS[script]()
