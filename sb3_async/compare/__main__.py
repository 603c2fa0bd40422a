"""
python -m sb3_async.compare --env CartPole-v1 --seeds 5 --timesteps 300000 --out results/
python -m sb3_async.compare --env CartPole-v1 --algos a3c a2c offpac --seeds 5 --timesteps 300000 --out results/
python -m sb3_async.compare --env CartPole-v1 --algos a3c --scaling 1 2 --envs-per-worker 4 --seeds 3 --timesteps 200000 \
    --out results/scaling
python -m sb3_async.compare --env CartPole-v1 --algos a3c a3c:update_mode=hogwild a2c a2c:vec_env=subproc \
    --env-latency exponential:0.001 --seeds 5 --timesteps 300000 --out results/slow_envs
python -m sb3_async.compare --env MinAtar/Breakout-v1 --algos a3c a3c_lstm a2c \
    --conf-file a2c=benchmarks/configs/a2c_minatar.yml --seeds 3 --timesteps 2000000 --out results/minatar/Breakout --resume

runs.csv and curves.csv in --out are rewritten after every run, so an interrupted comparison keeps its
finished runs; --resume then trains only the runs (algo variant and seed) that --out does not hold yet.
"""

import argparse
import shlex
import sys
from pathlib import Path

from sb3_async.compare.harness import (
    RunResult,
    default_algos,
    parse_conf_files,
    plan_runs,
    run_all,
    runs_still_to_do,
    validate,
)
from sb3_async.compare.report import read_comparison, write_csvs, write_report, write_report_from_csvs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sb3_async.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", required=True, help="gymnasium env id")
    parser.add_argument(
        "--algos",
        nargs="+",
        default=None,
        help="rl-zoo3 algo names (a3c, offpac, a2c, ppo, sac, ...), each optionally with a variant: ALGO:KEY=VALUE[,...] "
        "sets hyperparameters over the config's (a3c:update_mode=hogwild), and vec_env=subproc steps a synchronous "
        "algo's envs in a SubprocVecEnv (a2c:vec_env=subproc). Default: a3c a2c ppo, and sac for continuous actions",
    )
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0 .. seeds-1)")
    parser.add_argument("--timesteps", type=int, default=300_000)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument(
        "--conf-file",
        nargs="+",
        default=None,
        metavar="[ALGO=]PATH",
        help="rl-zoo3 config files to use instead of the algos' defaults: PATH for every algo, ALGO=PATH for one "
        "(a2c=benchmarks/configs/a2c_minatar.yml)",
    )
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument(
        "--threshold", type=float, default=None, help="score that counts as solved (default: the env spec's reward_threshold)"
    )
    parser.add_argument("--window", type=int, default=100, help="training episodes averaged for the threshold")
    parser.add_argument("--num-threads", type=int, default=1, help="torch threads of each run's main process")
    parser.add_argument("--scaling", type=int, nargs="+", default=None, help="sweep these worker counts (async algos only)")
    parser.add_argument(
        "--envs-per-worker", type=int, default=None, help="in a scaling sweep, envs per worker (default: as configured)"
    )
    parser.add_argument(
        "--env-latency",
        default=None,
        metavar="DIST:MEAN_SECONDS",
        help="wrap every env in sb3_async.common.wrappers.RandomLatency (a random sleep before each step), "
        "e.g. exponential:0.001",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs --out already holds and train only the missing ones (same env and --timesteps); "
        "without it, the files in --out are replaced",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="redraw results.md and the plots from --out's CSVs, without training"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    command = "python -m sb3_async.compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.report_only:
        runs, curves, commands = read_comparison(args.out)
        # The commands that trained these runs, not this one.
        print(write_report_from_csvs(runs, curves, args.out, commands))
        return
    earlier, commands = None, [command]
    try:
        if args.algos is None:
            args.algos = default_algos(args.env)
        validate(args.algos, args.env, args.seeds, args.timesteps, args.scaling, args.env_latency)
        conf_files = parse_conf_files(args.conf_file)
        planned = plan_runs(
            args.algos, args.env, args.seeds, args.timesteps, args.scaling,
            threshold=args.threshold, window=args.window, eval_episodes=args.eval_episodes, conf_files=conf_files,
            num_threads=args.num_threads, envs_per_worker=args.envs_per_worker, env_latency=args.env_latency,
        )  # fmt: skip
        if args.resume and (args.out / "runs.csv").exists():
            runs, curves, earlier_commands = read_comparison(args.out)
            planned = runs_still_to_do(planned, runs)
            earlier = (runs, curves)
            commands = earlier_commands if command in earlier_commands else [*earlier_commands, command]
    except ValueError as error:
        parser.error(str(error))
    if not planned:
        print(f"{args.out} already holds every planned run.")
        return
    results: list[RunResult] = []

    def keep(result: RunResult) -> None:
        # The CSVs after every run, so that an interrupted comparison keeps its finished runs
        # (--report-only draws the table and plots from them); the report once, at the end.
        results.append(result)
        write_csvs(results, args.out, commands, earlier)

    run_all(planned, on_result=keep)
    print(write_report(results, args.out, commands, earlier))
    print(f"\nWrote {args.out}/runs.csv, curves.csv, results.md and plots.")


if __name__ == "__main__":
    main()
