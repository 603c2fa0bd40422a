"""save() is atomic: the file at the path is always a whole model, whatever happens during a save."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import stable_baselines3.common.base_class
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sb3_async import A3C, AsyncQLearning, OffPolicyAC

BIG = dict(policy_kwargs=dict(net_arch=[1024, 1024]), n_workers=1, device="cpu")  # about 8 MB to write

SAVE_FOREVER = textwrap.dedent(
    """
    import sys, time
    from sb3_async import A3C
    model = A3C("MlpPolicy", "CartPole-v1", seed=0, **{big})
    started = time.perf_counter()
    model.save(sys.argv[1])
    print("saved", time.perf_counter() - started, flush=True)
    while True:
        print("saving", flush=True)
        model.save(sys.argv[1])
    """
)


def flat(policy) -> th.Tensor:
    return th.nn.utils.parameters_to_vector(policy.parameters()).detach()


def test_a_process_killed_while_it_saves_leaves_a_file_that_loads(tmp_path):
    path = tmp_path / "best_model.zip"
    script = SAVE_FOREVER.format(big=BIG)
    rng = random.Random(0)
    for kill in range(3):
        child = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            kind, seconds = child.stdout.readline().split()
            assert kind == "saved"
            for _ in range(1 + kill):  # let a few saves replace the file, then kill one halfway (or anywhere in it)
                assert child.stdout.readline().strip() == "saving"
            time.sleep(rng.uniform(0.0, float(seconds)))
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        model = A3C.load(path, device="cpu")  # a BadZipFile or a torch error here is a torn file
        assert flat(model.policy).numel() > 1_000_000


@pytest.mark.parametrize("algorithm", [A3C, OffPolicyAC, AsyncQLearning])
def test_a_save_that_fails_halfway_keeps_the_old_file_and_leaves_no_partial_one(algorithm, tmp_path, monkeypatch):
    model = algorithm("MlpPolicy", make_vec_env("CartPole-v1"), n_workers=1, seed=0, device="cpu")
    model.save(tmp_path / "model")  # SB3's naming: model.zip
    assert os.listdir(tmp_path) == ["model.zip"]
    saved = flat(model.policy).clone()

    def write_half_then_fail(save_path, **kwargs):
        with open(save_path, "wb") as file:
            file.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(stable_baselines3.common.base_class, "save_to_zip_file", write_half_then_fail)
    with th.no_grad():
        next(model.policy.parameters()).add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        model.save(tmp_path / "model.zip")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.zip"]
    assert th.equal(flat(algorithm.load(tmp_path / "model.zip", device="cpu").policy), saved)
