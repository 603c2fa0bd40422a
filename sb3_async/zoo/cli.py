"""``python -m sb3_async.zoo <script> [rl-zoo3 flags]``: rl-zoo3's scripts, with sb3_async's algorithms registered."""

import sys
from unittest import mock

import rl_zoo3.train
from rl_zoo3.enjoy import enjoy
from rl_zoo3.plots import all_plots, plot_from_file, plot_train

from sb3_async.zoo.experiment import AsyncExperimentManager, register


def train() -> None:
    # rl-zoo3's train() builds its ExperimentManager by name; ours only adds to it.
    with mock.patch.object(rl_zoo3.train, "ExperimentManager", AsyncExperimentManager):
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
