"""Learning tests: real training, real scores."""

import functools

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnvBox
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize, sync_envs_normalization

from sb3_async import A3C, IMPALA, AsyncQLearning, AsyncSARSA, OffPolicyAC
from sb3_async.common.wrappers import ExploringStarts
from sb3_async.zoo.experiment import config_kwargs

# A uniformly random policy balances CartPole-v1 for about 22 steps.
CARTPOLE_RANDOM_SCORE = 22.0
# Evaluations play their episodes 4 at a time: one forward pass acts in 4 envs, so an evaluation costs
# about a third of what one env at a time does (SB3's evaluate_policy still plays exactly n_eval_episodes).
EVAL_ENVS = 4


class _CannotReachThreshold(Exception):
    pass


class EvaluateUntil(BaseCallback):
    """
    Every ``eval_freq`` calls, the deterministic policy's mean return over ``n_eval_episodes`` new
    episodes (SB3's ``evaluate_policy``, with the VecNormalize statistics synced as EvalCallback
    does); training stops at the first mean that reaches ``threshold``. Knowing ``best_return`` (the
    most an episode can score), an evaluation stops as soon as the episodes it has played leave no
    way to reach the threshold: a failing evaluation costs a few episodes, a passing one plays them all.
    """

    def __init__(self, eval_env, eval_freq: int, n_eval_episodes: int, threshold: float, best_return: float | None):
        super().__init__()
        self.eval_env, self.eval_freq, self.n_eval_episodes = eval_env, eval_freq, n_eval_episodes
        self.threshold, self.best_return = threshold, best_return
        self.best_mean_reward = -np.inf
        self.means: list[str] = []  # every evaluation, so a failure shows the whole curve

    def _give_up_when_out_of_reach(self, local_vars: dict, _globals: dict) -> None:
        played = local_vars["episode_rewards"]
        if self.best_return is not None and played:
            still_possible = sum(played) + self.best_return * (self.n_eval_episodes - len(played))
            if still_possible < self.threshold * self.n_eval_episodes:
                raise _CannotReachThreshold(f"{np.mean(played):.1f} after {len(played)}")

    def _on_step(self) -> bool:
        if self.n_calls % self.eval_freq != 0:
            return True
        if self.model.get_vec_normalize_env() is not None:
            sync_envs_normalization(self.training_env, self.eval_env)
        try:
            mean, _ = evaluate_policy(
                self.model, self.eval_env, self.n_eval_episodes, callback=self._give_up_when_out_of_reach, warn=False
            )
        except _CannotReachThreshold as stopped:
            self.means.append(str(stopped))
            return True
        self.means.append(f"{mean:.1f}")
        self.best_mean_reward = max(self.best_mean_reward, mean)
        return mean < self.threshold


def train_until(
    model, eval_env, threshold: float, budget: int, eval_every: int, n_eval_episodes: int, best_return: float | None = None
) -> "EvaluateUntil":
    """
    Train, evaluating the deterministic policy on ``n_eval_episodes`` new episodes every ``eval_every``
    steps, until one evaluation averages ``threshold`` or the budget is spent; return the evaluations.
    Each evaluation plays episodes it has not played before, so a score is a real mean, not a re-run.
    ``best_return`` (the most an episode can score) lets an evaluation that cannot pass stop early.
    """
    evaluations = EvaluateUntil(eval_env, eval_every // model.n_envs, n_eval_episodes, threshold, best_return)
    model.learn(budget, callback=evaluations)
    return evaluations


def _failure(model, threshold: float, eval_every: int, evaluations: "EvaluateUntil") -> str:
    return (
        f"best {evaluations.best_mean_reward:.1f} < {threshold} after {model.num_timesteps} steps; "
        f"evaluations every {eval_every} (mean, or mean after the episodes played until it was out of reach): "
        f"{evaluations.means}"
    )


def assert_training_reaches(
    model, eval_env, threshold: float, budget: int, eval_every: int, n_eval_episodes: int, best_return: float | None = None
) -> None:
    """
    :func:`train_until`, and fail, with every evaluation, if the budget is spent first. Asynchronous
    runs differ run to run even with a seed, so a learning test gives the slowest run it has seen about
    twice its steps as budget, and a typical run stops well before it.
    """
    evaluations = train_until(model, eval_env, threshold, budget, eval_every, n_eval_episodes, best_return)
    assert evaluations.best_mean_reward >= threshold, _failure(model, threshold, eval_every, evaluations)


def assert_solves_cartpole(model, seed: int, budget: int, eval_every: int = 10_000) -> None:
    """The deterministic policy must average 475 on 20 new CartPole-v1 episodes within ``budget`` steps."""
    eval_env = make_vec_env("CartPole-v1", n_envs=EVAL_ENVS, seed=100 + seed)
    assert_training_reaches(
        model, eval_env, threshold=475, budget=budget, eval_every=eval_every, n_eval_episodes=20, best_return=500
    )


# A hand-tuned linear controller for CartPole (cart position, cart velocity, pole angle, angular velocity),
# made stochastic: it pushes right with probability sigmoid(w . s). It balances every episode for 500 steps,
# yet takes the less likely action at 28% of its steps, so its data also holds states off the balanced path.
BALANCING_WEIGHTS = np.array([1.5, 3.0, 30.0, 6.0])


def balancing_controller(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A behaviour policy that is not a trained network: a module-level function, so it pickles to the workers."""
    logits = obs @ BALANCING_WEIGHTS
    actions = (np.random.random(len(obs)) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int64)
    # log sigmoid(+-logit), written so that neither side overflows
    log_probs = -np.logaddexp(0.0, np.where(actions == 1, -logits, logits))
    return actions, log_probs.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_a3c_solves_cartpole(seed, no_leaks):
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=2, envs_per_worker=4, seed=seed, device="cpu")
    assert_solves_cartpole(model, seed, budget=250_000)


def test_impala_solves_cartpole_with_its_zoo_entry(no_leaks):
    # What ships: 2 actors x 4 envs, batches of 8 trajectories of 20 steps. Trial runs reached a training mean of
    # 475 in 57k-100k steps (docs/impala.md).
    model = IMPALA("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **config_kwargs("impala", "CartPole-v1"))
    assert_solves_cartpole(model, seed=0, budget=200_000)


@pytest.mark.parametrize("seed", [0, 1])
def test_offpac_solves_cartpole_from_epsilon_behaviour(seed, no_leaks):
    # The target policy is judged deterministically; it never acted alone during training.
    # A little entropy keeps pi from turning greedy before the critic knows better.
    # Trial runs (2026-11-27, 4 per seed) first passed 475 at 10k, 10k, 10k, 30k (seed 0) and 10k, 50k, 160k,
    # 250k (seed 1): a run can reach 440 early, fall to 100-200 for 100k+ steps and climb back. Learning rate
    # 1e-4 did not help (40k-310k, the same dips). So the budget is 500k, twice the slowest; 250k had no margin.
    model = OffPolicyAC(
        "MlpPolicy",
        "CartPole-v1",
        behavior_policy=("epsilon", 0.3),
        ent_coef=0.01,
        n_workers=2,
        envs_per_worker=4,
        seed=seed,
        device="cpu",
    )
    assert_solves_cartpole(model, seed, budget=500_000)


def test_offpac_solves_cartpole_from_an_experts_behaviour(no_leaks):
    # The expert is balancing_controller: not pi, and the same expert in every run. The A3C expert this test used
    # to train (until its deterministic policy scored 475) was a different expert each run; one acted at 323
    # stochastically, and in two CI runs the target plateaued at 300-445 for 150k and 300k steps: such data does not
    # hold the states a slightly different policy drifts into. With docs/offpac.md's settings for data that is not
    # pi's (learning rate 1e-4, entropy 0.01), trial runs of this test first passed 475 at 70k, 70k and 80k (seeds
    # 0, 1, 2) and scored 500 at every evaluation after, to 150k-200k. At the default 7e-4 without entropy the
    # target passed 475 by 20k, then collapsed to always pushing one way (9 steps) by 50k, seeds 0 and 1.
    model = OffPolicyAC(
        "MlpPolicy",
        "CartPole-v1",
        behavior_policy=balancing_controller,
        learning_rate=1e-4,
        ent_coef=0.01,
        n_workers=2,
        envs_per_worker=4,
        seed=0,
        device="cpu",
    )
    assert_solves_cartpole(model, seed=0, budget=200_000)


@pytest.mark.parametrize("seed", [0, 1])
def test_offpac_learns_cartpole_from_uniform_behaviour_that_covers_its_states(seed, no_leaks):
    # Uniform behaviour is as far from a good pi as two actions allow.
    # From CartPole's own starts its episodes last about 22 steps: the data never holds the states a
    # balancing policy reaches later, no weighting of the data can learn about them, and the target stops at
    # 200-320 (docs/offpac.md). Started anywhere in this box of cart positions, velocities, pole angles and
    # angular velocities, the same behaviour covers them. Evaluation starts as CartPole does.
    # At learning rate 1e-4 and entropy 0.01 (docs/offpac.md's settings for data that is not pi's), trial curves
    # first passed 475 at 100k on a 25k grid and held 485-500 to 300k, both seeds; the test took 32 s and 54 s.
    # Four runs of this test's own loop (2026-11-27, two per seed) passed at 40k-50k and scored 486-494 100k later.
    env = make_vec_env("CartPole-v1", n_envs=1, wrapper_class=ExploringStarts, wrapper_kwargs={"high": [2.0, 1.5, 0.15, 1.5]})
    model = OffPolicyAC(
        "MlpPolicy",
        env,
        behavior_policy="uniform",
        learning_rate=1e-4,
        ent_coef=0.01,
        n_workers=2,
        envs_per_worker=4,
        seed=seed,
        device="cpu",
    )
    assert_solves_cartpole(model, seed, budget=200_000)
    # More of the same data must not make it worse (issue 16 saw 161 at 100k fall to 101 at 300k from CartPole's starts).
    solved_at = model.num_timesteps
    model.learn(100_000, reset_num_timesteps=False)
    score, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=EVAL_ENVS, seed=200 + seed), n_eval_episodes=20)
    assert score >= 450, f"{score:.1f} at {model.num_timesteps} steps, after 475 at {solved_at}"


# The CartPole-v1 entry of zoo_configs/async_q.yml, with 2 workers x 2 envs; each method's paper
# exploration (every worker draws its final epsilon from {0.1, 0.01, 0.5}).
ASYNC_Q_CARTPOLE = dict(
    learning_rate=1e-3, train_freq=5, target_update_interval=1000, n_workers=2, envs_per_worker=2, device="cpu"
)


@pytest.mark.parametrize(
    "method, budget, eval_every, seed",
    [
        # One-step targets pass values back one step per target refresh: the slowest to learn.
        # Trial runs solved in 190k-400k steps, and once not within 500k; on 2026-12-06 one-step Q took
        # 620k. Async runs vary, so 1.2M, twice the slowest seen; a passing run costs no more.
        (functools.partial(AsyncQLearning, n_steps=1), 1_200_000, 20_000, 0),
        (functools.partial(AsyncSARSA, n_steps=1), 1_200_000, 20_000, 1),
        # The paper's n-step Q: every state of a 5-step segment looks ahead to the segment's end.
        (functools.partial(AsyncQLearning, n_steps=5), 400_000, 10_000, 0),
    ],
    # One seed each (both seeds are used): with two each these took 9 of the suite's minutes.
    ids=["1-step-q-seed0", "1-step-sarsa-seed1", "n-step-q-seed0"],
)
def test_async_value_methods_solve_cartpole(method, budget, eval_every, seed, no_leaks):
    model = method("MlpPolicy", "CartPole-v1", seed=seed, **ASYNC_Q_CARTPOLE)
    assert_solves_cartpole(model, seed, budget=budget, eval_every=eval_every)


def test_offpac_learns_from_uniform_behaviour(no_leaks):
    # Only random actions ever reach the env, so episodes last about 22 steps and the states near
    # the balanced pole's edge are rarely seen; the greedy target policy still balances far longer.
    model = OffPolicyAC(
        "MlpPolicy", "CartPole-v1", behavior_policy="uniform", n_workers=2, envs_per_worker=4, seed=0, device="cpu"
    )
    model.learn(100_000)
    mean_reward, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=EVAL_ENVS, seed=999), n_eval_episodes=20)
    assert mean_reward >= CARTPOLE_RANDOM_SCORE * 3, f"{mean_reward:.1f}"  # 135 to 190 measured


def test_a3c_swings_up_pendulum(no_leaks):
    # rl-zoo's A2C settings for Pendulum-v1, with 2 workers x 4 envs in place of 8 envs. A random policy
    # scores about -1205; -400 over 10 episodes means the pendulum is swung up and held in most of them.
    # About 40 trial runs here (seeds 0-4, idle, with one or two busy loops beside them, with a slowed
    # learner, in learner mode) first reached it after 100k-340k steps, yet the two CI runs since IMPALA
    # landed did not within 400k and 700k (one oscillated between -490 and -1400, the other came to -567
    # at 120k and fell back for good). The run is not reproducible even with a seed, so a second seed
    # gets its own 700k when the first misses; both runs' evaluations are reported if both miss, and a
    # build that cannot learn Pendulum misses with both.
    threshold, eval_every, misses = -400, 20_000, []
    for seed in (0, 1):
        env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1), gamma=0.9)
        model = A3C(
            "MlpPolicy",
            env,
            n_workers=2,
            envs_per_worker=4,
            n_steps=8,
            gamma=0.9,
            gae_lambda=0.9,
            use_sde=True,
            policy_kwargs=dict(log_std_init=-2, ortho_init=False),
            seed=seed,
            device="cpu",
        )
        # EvaluateUntil syncs the VecNormalize statistics into the eval env.
        eval_env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=EVAL_ENVS, seed=100), training=False, norm_reward=False)
        evaluations = train_until(model, eval_env, threshold, 700_000, eval_every, n_eval_episodes=10, best_return=0)
        if evaluations.best_mean_reward >= threshold:
            return
        misses.append(f"seed {seed}: {_failure(model, threshold, eval_every, evaluations)}")
    pytest.fail("\n".join(misses))


def test_offpac_swings_up_pendulum_with_its_zoo_entry(no_leaks):
    # The entry tuned for wall-clock time (2026-12-07, docs/zoo.md): 4 workers x 2 envs, gSDE, no replay. A random
    # policy scores about -1205. Over 5 seeds its 10-episode training mean reached -200 after 48k-60k steps; this
    # test passed 11 times of 11 (4 of them two at a time on 2 cores), in 10-23 s. The budget of 400k is the one
    # the entry before had (it got there after 100k-190k steps in 12 trial runs, docs/offpac.md), so it leaves
    # a wide margin. One seed: a second run would add a minute to the suite for little.
    kwargs = config_kwargs("offpac", "Pendulum-v1")
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1), gamma=kwargs["gamma"])
    model = OffPolicyAC("MlpPolicy", env, seed=0, device="cpu", **kwargs)
    eval_env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=EVAL_ENVS, seed=100), training=False, norm_reward=False)
    assert_training_reaches(
        model, eval_env, threshold=-250, budget=400_000, eval_every=10_000, n_eval_episodes=10, best_return=0
    )


def test_offpac_learns_continuous_actions_from_uniform_behaviour(no_leaks):
    # IdentityEnvBox: observe x in [-1, 1], reward 1 for an action within 0.5 of x, 10 steps an
    # episode. Uniform actions score about 4; the Gaussian target policy must learn from them to hit.
    model = OffPolicyAC("MlpPolicy", _identity_box, behavior_policy="uniform", n_workers=2, seed=0, device="cpu")
    model.learn(20_000)
    mean_reward, _ = evaluate_policy(model, make_vec_env(_identity_box, n_envs=EVAL_ENVS, seed=99), n_eval_episodes=20)
    assert mean_reward >= 9.0, f"{mean_reward:.2f} of 10"


def _identity_box():
    return IdentityEnvBox(eps=0.5, ep_length=10)
