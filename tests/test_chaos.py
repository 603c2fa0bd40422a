"""
The chaos soak's short version (issue 29): ``benchmarks/chaos.py`` kills a random worker every
fraction of a second through a short ``learn()``; every kill is survived and nothing is lost or
left behind. The soak itself (10 minutes per configuration, a kill every 2-10 s) is a benchmark:
docs/a3c.md, "Faults".
"""

import importlib.util
import pathlib
import sys

import cloudpickle
import pytest

CHAOS_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "chaos.py"


@pytest.fixture(scope="module")
def chaos():
    spec = importlib.util.spec_from_file_location("chaos", CHAOS_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = module
    try:
        spec.loader.exec_module(module)
        cloudpickle.register_pickle_by_value(module)  # the workers get its env wrapper by value, as when run as a script
        yield module
        cloudpickle.unregister_pickle_by_value(module)
    finally:
        del sys.modules["chaos"]


@pytest.mark.parametrize(
    "config, every, timesteps",
    [
        ("a3c-locked", (0.3, 1.2), 30_000),
        ("offpac-learner", (0.3, 1.2), 30_000),
        # A Ray actor takes about 4 s to start here, and the learner waits for it: fewer steps, fewer kills.
        pytest.param("a3c-ray", (1.0, 2.0), 15_000, marks=pytest.mark.ray),
    ],
)
def test_training_survives_a_worker_killed_every_second_or_so(chaos, config, every, timesteps, no_leaks):
    result = chaos.soak(config, seconds=20, every=every, timesteps=timesteps)
    assert result.problems == []  # the steps asked for, a restart per kill, nothing left behind
    assert result.kills >= 2
    assert timesteps <= result.num_timesteps <= result.most_timesteps
    # The workers stepped at least what learn() counted; a kill loses at most the segment under way.
    assert 0 <= result.env_steps_not_counted
