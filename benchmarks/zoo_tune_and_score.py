"""
Tune A3C and OffPolicyAC with rl-zoo3's own Optuna pipeline, then score the zoo_configs entries.

    python benchmarks/zoo_tune_and_score.py tune  --algos a3c offpac --envs CartPole-v1 --trials 20 --timesteps 50000
    python benchmarks/zoo_tune_and_score.py tune  --algos a3c --envs Acrobot-v1 --trials 25 --objective time --time-budget 30
    python benchmarks/zoo_tune_and_score.py score --algos a3c offpac --seeds 0 1

``tune`` runs ``python -m sb3_async.zoo train -optimize`` (TPE sampler, median pruner, a journal file
storage under logs/tune/) and prints the best trial's parameters as zoo_configs entries. With
``--objective time`` a trial's value is minus its seconds to the env's threshold (docs/zoo.md), with
up to ``--time-budget`` seconds and ``--timesteps`` (default then 1M) per trial.
``score`` trains every config entry named with ``--envs`` (default: the issue's five envs) with
rl-zoo3's EvalCallback and prints a Markdown table of the final and best 10-episode evaluations.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna

from sb3_async.zoo.hyperparams_opt import CONVERTERS

ENVS = ["CartPole-v1", "Acrobot-v1", "LunarLander-v3", "Pendulum-v1", "MountainCarContinuous-v0"]


def zoo(*flags: str) -> None:
    subprocess.run([sys.executable, "-m", "sb3_async.zoo", *flags], check=True)


def tune(args: argparse.Namespace) -> None:
    timed = args.objective == "time"
    # A timed trial reports to the pruner 4 times over its budget; a scored one is evaluated twice.
    objective = ["--objective", "time", "--time-budget", str(args.time_budget), "--n-evaluations", "4"] if timed else []
    for algo in args.algos:
        for env_id in args.envs:
            name = f"{algo}-{env_id}-time" if timed else f"{algo}-{env_id}"
            storage = Path(args.log_folder) / f"{name}.log"
            timesteps = args.timesteps or (1_000_000 if timed else 50_000)
            zoo("train", "--algo", algo, "--env", env_id, "-f", args.log_folder, "-n", str(timesteps),
                "-optimize", "--n-trials", str(args.trials), "--eval-episodes", "10",
                "--sampler", "tpe", "--pruner", "median", "--n-startup-trials", "5", *(objective or ["--n-evaluations", "2"]),
                "--storage", str(storage), "--study-name", name, "--no-optim-plots", "--seed", "0")  # fmt: skip
            study = optuna.load_study(
                study_name=name,
                storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage))),
            )
            values = [t.value for t in study.trials if t.value is not None]
            print(f"\n{algo} {env_id}: {len(study.trials)} trials, best {study.best_value:.1f} "
                  f"(trial {study.best_trial.number}), median {statistics.median(values):.1f}")  # fmt: skip
            print(f"  best params: {study.best_params}")
            print(f"  as zoo_configs entries: {CONVERTERS[algo](study.best_params)}", flush=True)


def score(args: argparse.Namespace) -> None:
    rows = []
    for algo in args.algos:
        for env_id in args.envs:
            finals, bests = [], []
            for seed in args.seeds:
                folder = Path(args.log_folder) / f"seed{seed}"
                zoo("train", "--algo", algo, "--env", env_id, "-f", str(folder), "--seed", str(seed),
                    "--eval-freq", str(args.eval_freq), "--eval-episodes", "10", "--verbose", "0")  # fmt: skip
                run = max((folder / algo).glob(f"{env_id}_*"), key=lambda path: int(path.name.rsplit("_", 1)[1]))
                results = np.load(run / "evaluations.npz")["results"].mean(axis=1)
                finals.append(float(results[-1]))
                bests.append(float(results.max()))
                print(f"{algo} {env_id} seed {seed}: final {finals[-1]:.1f}, best {bests[-1]:.1f} ({run})", flush=True)
            rows.append((algo, env_id, finals, bests))
    print("\n| algo | env | final eval (per seed) | best eval (per seed) |\n|---|---|---|---|")
    for algo, env_id, finals, bests in rows:
        print(f"| {algo} | {env_id} | {', '.join(f'{v:.1f}' for v in finals)} | {', '.join(f'{v:.1f}' for v in bests)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["tune", "score"])
    parser.add_argument("--algos", nargs="+", default=["a3c", "offpac"])
    parser.add_argument("--envs", nargs="+", default=ENVS)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--timesteps", type=int, default=None, help="steps per trial (default 50k; 1M if timed)")
    parser.add_argument("--objective", choices=["score", "time"], default="score")
    parser.add_argument("--time-budget", type=float, default=60.0, help="seconds per trial with --objective time")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--eval-freq", type=int, default=25_000)
    parser.add_argument("--log-folder", default=None)
    args = parser.parse_args()
    args.log_folder = args.log_folder or f"logs/{args.command}"
    {"tune": tune, "score": score}[args.command](args)


if __name__ == "__main__":
    main()
