"""A worker that dies, an env that raises, a NaN gradient, a failing callback, Ctrl-C."""

import functools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import gymnasium as gym
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_async import A3C, IMPALA, AsyncQLearning, AsyncSARSA, NonFiniteTrainingError, OffPolicyAC, WorkerError
from sb3_async.common.collectors import LocalCollector
from tests.conftest import RecordingOutput, forkserver_children
from tests.envs import BrokenFromEnv, HangingEnv, NaNRewardEnv, RaisingEnv, ThreeActionCartPole

FAST = dict(n_workers=2, n_steps=5, seed=0, device="cpu")
ALGORITHMS = {
    "a3c": functools.partial(A3C, "MlpPolicy", **FAST),
    "offpac": functools.partial(OffPolicyAC, "MlpPolicy", learning_starts=20, batch_size=10, **FAST),
    # Segments of 5 steps, as the others'.
    "async_q": functools.partial(AsyncQLearning, "MlpPolicy", train_freq=5, **FAST),
    "async_sarsa": functools.partial(AsyncSARSA, "MlpPolicy", train_freq=5, **FAST),
    # Actors hand over trajectories, not gradients; with batch_size=1 each one is an update, as a gradient is.
    "impala": functools.partial(IMPALA, "MlpPolicy", batch_size=1, **FAST),
    # Workers that apply their own gradients fail, and are stopped, the same way.
    "a3c_hogwild": functools.partial(A3C, "MlpPolicy", update_mode="hogwild", **FAST),
    "offpac_hogwild": functools.partial(
        OffPolicyAC, "MlpPolicy", learning_starts=20, batch_size=10, update_mode="hogwild", **FAST
    ),
}
every_algorithm = pytest.mark.parametrize("make_model", ALGORITHMS.values(), ids=ALGORITHMS.keys())


class KillAWorker(BaseCallback):
    def __init__(self, at_call: int):
        super().__init__()
        self.at_call = at_call
        self.killed: int | None = None

    def _on_step(self) -> bool:
        if self.n_calls == self.at_call:
            self.killed = forkserver_children()[0]
            os.kill(self.killed, signal.SIGKILL)
        return True


class RaiseInCallback(BaseCallback):
    def _on_step(self) -> bool:
        if self.n_calls == 20:
            raise KeyError("callback failed on purpose")
        return True


@every_algorithm
def test_sigkill_of_a_worker_is_reported_and_everything_stops(make_model, no_leaks):
    model = make_model("CartPole-v1")
    killer = KillAWorker(at_call=50)
    started = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker \d died unexpectedly \(killed by SIGKILL\)") as error:
        model.learn(1_000_000, callback=killer)
    assert time.monotonic() - started < 10  # noticed within a second of the kill, not at the end
    assert error.value.worker_id in (0, 1)


@every_algorithm
@pytest.mark.timeout(60)  # a Hogwild step budget that kept the dead worker's claim would wait forever
def test_sigkill_of_a_worker_with_a_restart_left_training_goes_on(make_model, no_leaks):
    model = make_model("CartPole-v1", max_worker_restarts=1)
    output = RecordingOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    killer = KillAWorker(at_call=50)
    model.learn(2_000, callback=killer, log_interval=20)
    assert model.num_timesteps >= 2_000
    assert model.worker_restarts == 1
    assert output.dumps[-1]["async/worker_restarts"] == 1
    assert killer.killed not in forkserver_children()


def test_a_second_death_beyond_max_worker_restarts_is_an_error(no_leaks):
    model = ALGORITHMS["a3c"]("CartPole-v1", max_worker_restarts=1)
    with pytest.raises(WorkerError, match=r"worker \d died unexpectedly \(killed by SIGKILL\)"):
        model.learn(1_000_000, callback=[KillAWorker(at_call=50), KillAWorker(at_call=150)])
    assert model.worker_restarts == 1


def test_a_worker_killed_holding_the_shared_lock_stalls_nobody(no_leaks):
    model = ALGORITHMS["a3c"]("CartPole-v1")
    params = th.nn.utils.parameters_to_vector(model.policy.parameters()).detach()
    collector = LocalCollector(model._worker_spec(), 2, params, max_worker_restarts=1)
    try:
        collector.start()
        report = collector.next_report()
        collector.send_go(report.worker_id)
        # As if worker 0 died while it copied the parameters: the lock stays held, by nobody alive.
        collector._shared.lock.acquire()
        os.kill(collector.worker_pids[0], signal.SIGKILL)
        started = time.monotonic()
        collector.publish(params)
        assert time.monotonic() - started < 2
        # Worker 1 goes on, and worker 0's replacement copies the parameters and reports. (Reports the
        # dead worker sent before it died may come first.)
        reported = set()
        while not (1 in reported and 0 in reported and collector.restarts == 1):
            report = collector.next_report()
            if report.worker_id == 1 or collector.restarts == 1:
                reported.add(report.worker_id)
            collector.send_go(report.worker_id)
        assert collector.restarts == 1
    finally:
        collector.close()


@every_algorithm
def test_env_that_raises_is_reported_with_the_workers_traceback(make_model, no_leaks):
    # An exception is an error even with restarts left: a rebuilt worker would raise it again.
    model = make_model(lambda: RaisingEnv(fail_after=30), max_worker_restarts=2)
    with pytest.raises(WorkerError, match="raised an exception") as error:
        model.learn(100_000)
    assert model.worker_restarts == 0
    assert "RuntimeError: the env broke on purpose" in str(error.value)
    assert "tests/envs.py" in error.value.worker_traceback


@every_algorithm
def test_exception_in_a_callback_stops_every_worker(make_model, no_leaks):
    model = make_model("CartPole-v1")
    with pytest.raises(KeyError, match="callback failed on purpose"):
        model.learn(100_000, callback=RaiseInCallback())


@every_algorithm
def test_non_finite_gradient_is_dropped_and_counted(make_model, no_leaks):
    model = make_model(lambda: NaNRewardEnv(nan_at=30))
    with pytest.warns(
        UserWarning, match=r"dropped an update, which met a reward of nan from env 0 of worker \d, at that env's step 29"
    ):
        model.learn(500)
    # One NaN reward in each worker's env; OffPolicyAC does not keep that segment for replay.
    assert model.dropped_updates == 2
    for param in model.policy.parameters():
        assert th.isfinite(param).all()
    fresh_updates = model.num_timesteps / 5 - 2
    if isinstance(model, OffPolicyAC):  # plus about one replay per fresh segment, once 10 steps are stored in each worker
        assert model._n_updates == pytest.approx(2 * fresh_updates - 4, abs=4)
    else:
        assert model._n_updates == pytest.approx(fresh_updates, abs=2)


@every_algorithm
def test_updates_that_are_all_dropped_stop_training_and_name_the_first_bad_step(make_model, no_leaks):
    model = make_model(functools.partial(BrokenFromEnv, broken_from=100), max_dropped_updates_in_a_row=20)
    with pytest.warns(UserWarning, match="dropped an update"):
        with pytest.raises(NonFiniteTrainingError, match="the last 20 updates were all dropped") as error:
            model.learn(100_000)
    # Each worker's env turns at its 100th step (index 99); the first dropped update of the run is named.
    assert re.search(
        r"first update dropped in this run met a reward of nan from env 0 of worker \d, at that env's step 99 ",
        str(error.value),
    )
    assert model.num_timesteps < 2_000  # it stopped soon after the data went bad, not after the 100,000 steps asked


@every_algorithm
def test_a_non_finite_observation_is_named_with_its_env_and_step(make_model, no_leaks):
    # A policy that samples from its logits fails on it at once (a WorkerError); an epsilon-greedy argmax acts on,
    # and its updates are dropped until training stops. Either way the error says which observation it was.
    model = make_model(
        functools.partial(BrokenFromEnv, broken_from=100, what="nan_observation"), max_dropped_updates_in_a_row=20
    )
    with pytest.raises((WorkerError, NonFiniteTrainingError)) as error:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the first dropped update's warning, where there is one
            model.learn(100_000)
    message = str(error.value)
    named = r"the policy failed on an observation that is not finite; the first was an observation of nan from env 0 of "
    named += r"worker \d, at that env's step 99 "
    dropped = r"first update dropped in this run met an observation of nan from env 0 of worker \d, at that env's step 99 "
    assert re.search(named if isinstance(error.value, WorkerError) else dropped, message), message


def test_the_learner_mode_names_the_bad_step_too(no_leaks):
    model = A3C(
        "MlpPolicy",
        functools.partial(BrokenFromEnv, broken_from=50),
        update_mode="learner",
        max_dropped_updates_in_a_row=5,
        **FAST,
    )
    with pytest.warns(UserWarning), pytest.raises(NonFiniteTrainingError, match="a reward of nan from env 0 of worker"):
        model.learn(100_000)


@pytest.mark.parametrize("update_mode", ["locked", "learner"])
def test_a_worker_whose_env_hangs_is_named_and_training_goes_on(update_mode, tmp_path, no_leaks):
    # One worker's env hangs; the other's 2,500 steps take at least 2.5 s, past the 1 s timeout on any machine.
    env = functools.partial(HangingEnv, hang_at=50, once_marker=str(tmp_path / "hung"), step_seconds=0.001)
    model = A3C("MlpPolicy", env, update_mode=update_mode, worker_timeout=1.0, **FAST)
    recording = RecordingOutput()
    model.set_logger(Logger(None, [recording]))
    with pytest.warns(UserWarning, match=r"worker \d has sent nothing for \d+ s; it is stepping its envs") as warned:
        model.learn(2_500, log_interval=10)
    assert "no restart is left" in str(warned[0].message)
    assert model.num_timesteps >= 2_500  # the other worker took them all
    assert recording.dumps[-1]["async/stalled_workers"] == 1


def test_a_silent_worker_is_replaced_while_restarts_are_left(tmp_path, no_leaks):
    # The replacement does not hang; at 1 ms a step, the run outlasts the 1 s timeout on any machine.
    env = functools.partial(HangingEnv, hang_at=50, once_marker=str(tmp_path / "hung"), step_seconds=0.001)
    model = A3C("MlpPolicy", env, worker_timeout=1.0, max_worker_restarts=1, **FAST)
    with pytest.warns(UserWarning, match="it is replaced, as a dead worker would be"):
        model.learn(2_500)
    assert model.worker_restarts == 1
    assert model.num_timesteps >= 2_500


@pytest.mark.parametrize(
    "what, message",
    [
        (
            "observation_shape",
            r"env 0 returned an observation outside its observation space at its step 29: expected Box\(.*\(4,\), "
            r"float32\), got an array of shape \(5,\)",
        ),
        # Monitor, around the env, refuses it first: its error, with where it happened (a note: Python 3.11+).
        pytest.param(
            "none_reward",
            r"not 'NoneType'\s+\(raised by env 0 of this worker's envs, at its step 29\)",
            marks=pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+"),
        ),
    ],
)
def test_env_output_outside_its_spaces_is_named_at_its_source(what, message, no_leaks):
    model = A3C("MlpPolicy", functools.partial(BrokenFromEnv, broken_from=30, what=what), **FAST)
    started = time.monotonic()
    with pytest.raises(WorkerError, match=r"sb3_async worker \d raised an exception") as error:
        model.learn(100_000)
    assert re.search(message, str(error.value)), str(error.value)
    assert time.monotonic() - started < 30  # at the bad step, not at the end


def test_copies_whose_action_spaces_differ_are_refused_as_the_workers_build_them(no_leaks):
    # SB3 takes the first sub-env's spaces; a worker given a copy of the second could not act in it.
    env = DummyVecEnv([lambda: gym.make("CartPole-v1"), ThreeActionCartPole])
    model = A3C("MlpPolicy", env, n_workers=1, envs_per_worker=2, device="cpu")
    with pytest.raises(WorkerError, match=r"env 1 of worker 0 has the action space Discrete\(3\), but the learner's env"):
        model.learn(1_000)


def _process_group_members(group: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(entry))
    return members


_TRAINING_SCRIPT = """
import faulthandler
import signal
import sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for stacks if we hang
# As in a terminal. A test run started in the background of a non-interactive shell (`cmd &`)
# inherits SIGINT ignored, and Python then leaves it ignored: Ctrl-C could never arrive.
signal.signal(signal.SIGINT, signal.default_int_handler)
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from sb3_async import A3C

class Announce(BaseCallback):
    def _on_training_start(self):
        if sys.argv[1] == "while_workers_start":
            print("ready", flush=True)
    def _on_step(self):
        if sys.argv[1] == "while_training" and self.n_calls == 200:
            print("ready", flush=True)
        return True

if __name__ == "__main__":
    try:
        A3C("MlpPolicy", "CartPole-v1", n_workers=2, device="cpu").learn(10_000_000, callback=Announce())
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(3)
"""


def _signal_training_and_check_nothing_is_left(
    tmp_path, when: str, send_signal, expected_exit: int, expected_output: str
) -> None:
    script = tmp_path / "train.py"
    script.write_text(_TRAINING_SCRIPT)
    shm_before = set(os.listdir("/dev/shm"))
    process = subprocess.Popen(
        [sys.executable, str(script), when],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=os.getcwd(),
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        send_signal(process.pid)
        try:
            exit_code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # Say where the learner is stuck: its threads' stacks, from faulthandler.
            os.kill(process.pid, signal.SIGUSR1)
            time.sleep(1.0)
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
            message = f"the learner did not exit within 30 s of the signal; its threads:\n{stderr[-6000:]}"
            pytest.fail(message)
        assert exit_code == expected_exit
        assert process.stdout.read().strip() == expected_output
        deadline = time.monotonic() + 5
        while _process_group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _process_group_members(process.pid) == []
        assert set(os.listdir("/dev/shm")) - shm_before == set()
    finally:
        if process.poll() is None or _process_group_members(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.parametrize("when", ["while_workers_start", "while_training"])
def test_ctrl_c_stops_every_worker_and_leaves_nothing_behind(tmp_path, when):
    # What a terminal's Ctrl-C does: SIGINT to the whole process group.
    _signal_training_and_check_nothing_is_left(
        tmp_path, when, lambda pid: os.killpg(pid, signal.SIGINT), expected_exit=3, expected_output="interrupted"
    )


def test_sigterm_to_the_learner_stops_every_worker_and_leaves_nothing_behind(tmp_path):
    # What `kill PID` or a job scheduler does: SIGTERM to the learner only. It exits as Python's
    # default would (128 + 15), but only after stopping its workers and freeing their shared memory.
    _signal_training_and_check_nothing_is_left(
        tmp_path, "while_training", lambda pid: os.kill(pid, signal.SIGTERM), expected_exit=143, expected_output=""
    )


def test_workers_exit_if_the_learner_is_killed(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            from sb3_async import A3C
            if __name__ == "__main__":
                print("start", flush=True)
                A3C("MlpPolicy", "CartPole-v1", n_workers=2, device="cpu").learn(10_000_000)
            """
        )
    )
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "start"
        time.sleep(4.0)
        assert len(_process_group_members(process.pid)) >= 3  # learner, forkserver, workers
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while _process_group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _process_group_members(process.pid) == []
    finally:
        os.killpg(process.pid, signal.SIGKILL) if _process_group_members(process.pid) else None
