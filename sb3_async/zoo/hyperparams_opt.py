"""
Optuna samplers and converters for the asynchronous algorithms, in rl-zoo3's format.

A sampler draws a trial's values (``trial.params``) and returns the algorithm's keyword arguments;
the converter turns stored ``trial.params`` back into keyword arguments, which is what
``--trial-id`` uses to reproduce a trial. As in rl-zoo3, gamma and gae_lambda are sampled as
``1 - x`` on a log scale, and ``net_arch``/``activation_fn`` by name.

``n_envs`` (from the config) is the total number of envs; a trial chooses how many workers share
them (``n_workers``, a divisor of ``n_envs``), so the evaluation schedule rl-zoo3 derives from
``n_envs`` stays right for every trial. Under the wall-clock objective (``--objective time``, whose
trials carry the user attribute ``objective="time"``), the layout is free instead: ``n_workers`` and
``envs_per_worker`` (each may be ``"auto"``) and ``update_mode`` are searched, since how the work sits
on the cores is what that objective ranks (:mod:`sb3_async.zoo.time_objective`). For Box actions the
actor-critics' samplers also search the Gaussian's initial log std and gSDE, which rl-zoo3's leave alone.
"""

from typing import Any

import optuna
from torch import nn

NET_ARCH = {
    "tiny": dict(pi=[64], vf=[64]),
    "small": dict(pi=[64, 64], vf=[64, 64]),
    "medium": dict(pi=[256, 256], vf=[256, 256]),
}
# SB3's DQN policies take one list of layer sizes for the Q-network.
Q_NET_ARCH = {"tiny": [64], "small": [64, 64], "medium": [256, 256]}
ACTIVATION_FN = {"tanh": nn.Tanh, "relu": nn.ReLU}
N_WORKERS_CHOICES = (1, 2, 4, 8)
# The wall-clock objective's layouts ("auto": measured at construction, see A3C's docstring).
TIME_LAYOUT_CHOICES: dict[str, tuple[Any, ...]] = {
    "n_workers": (1, 2, 4, 8, "auto"),
    "envs_per_worker": (1, 2, 4, 8, 16, "auto"),
    "update_mode": ("learner", "locked", "hogwild"),
}


def _sample_layout(trial: optuna.Trial, n_envs: int, update_modes: bool = True) -> dict[str, Any]:
    """
    The workers' layout: ``n_workers`` sharing ``n_envs``; or, for the wall-clock objective, any layout
    (and who applies the updates, for an algorithm with ``update_modes``).
    """
    if trial.user_attrs.get("objective") == "time":
        searched = {key: choices for key, choices in TIME_LAYOUT_CHOICES.items() if update_modes or key != "update_mode"}
        return {key: trial.suggest_categorical(key, choices) for key, choices in searched.items()}
    return {"n_workers": trial.suggest_categorical("n_workers", [n for n in N_WORKERS_CHOICES if n_envs % n == 0])}


def _sample_gaussian_exploration(trial: optuna.Trial, n_actions: int, gsde: bool) -> dict[str, Any]:
    """
    For Box actions, the Gaussian's exploration: its initial log std, and state-dependent noise or not
    (for an algorithm that takes ``use_sde``: ``gsde``).
    rl-zoo3 sets ``n_actions`` only for Box spaces (0 otherwise), and its own samplers leave these at SB3's
    defaults; on Pendulum they decide whether an actor-critic learns at all (docs/offpac.md, "Continuous actions").
    """
    if n_actions <= 0:
        return {}
    exploration: dict[str, Any] = {"log_std_init": trial.suggest_float("log_std_init", -3.0, 1.0)}
    if gsde:
        exploration["use_sde"] = trial.suggest_categorical("use_sde", [False, True])
    return exploration


def _with_envs_per_worker(hyperparams: dict[str, Any], n_envs: int) -> dict[str, Any]:
    """``envs_per_worker = n_envs // n_workers`` unless the trial chose its own."""
    if "envs_per_worker" in hyperparams:
        return hyperparams
    return {**hyperparams, "envs_per_worker": n_envs // hyperparams["n_workers"]}


def _sample_common(
    trial: optuna.Trial,
    n_actions: int,
    n_envs: int,
    n_steps_choices: list[int],
    update_modes: bool = True,
    gsde: bool = True,
) -> dict[str, Any]:
    """
    What A3C, OffPolicyAC and IMPALA share: the actor-critic loss weights, optimisation and network, and
    for Box actions (``n_actions > 0``) the Gaussian's exploration.
    """
    return {
        "n_steps": trial.suggest_categorical("n_steps", n_steps_choices),
        "one_minus_gamma": trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 0.003, log=True),
        "ent_coef": trial.suggest_float("ent_coef", 1e-8, 0.1, log=True),
        "vf_coef": trial.suggest_float("vf_coef", 0.2, 1.0),
        "max_grad_norm": trial.suggest_float("max_grad_norm", 0.3, 5.0, log=True),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCH)),
        "activation_fn": trial.suggest_categorical("activation_fn", list(ACTIVATION_FN)),
        **_sample_layout(trial, n_envs, update_modes),
        **_sample_gaussian_exploration(trial, n_actions, gsde),
    }


def _convert_common(params: dict[str, Any]) -> dict[str, Any]:
    hyperparams = dict(params)
    hyperparams["gamma"] = 1 - hyperparams.pop("one_minus_gamma")
    if "one_minus_gae_lambda" in hyperparams:
        hyperparams["gae_lambda"] = 1 - hyperparams.pop("one_minus_gae_lambda")
    policy_kwargs: dict[str, Any] = {}
    if "net_arch" in hyperparams:
        policy_kwargs["net_arch"] = NET_ARCH[hyperparams.pop("net_arch")]
    if "activation_fn" in hyperparams:
        policy_kwargs["activation_fn"] = ACTIVATION_FN[hyperparams.pop("activation_fn")]
    if "log_std_init" in hyperparams:
        policy_kwargs["log_std_init"] = hyperparams.pop("log_std_init")
    if policy_kwargs:
        hyperparams["policy_kwargs"] = policy_kwargs
    return hyperparams


def convert_a3c_params(params: dict[str, Any]) -> dict[str, Any]:
    """A3C keyword arguments from a trial's ``params`` (``envs_per_worker`` follows from ``n_envs``)."""
    return _convert_common(params)


def sample_a3c_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """Sampler for A3C: the paper's t_max (``n_steps``), gamma, GAE lambda, loss weights, lr, network, workers."""
    params = _sample_common(trial, n_actions, n_envs, [5, 8, 16, 32, 64])
    params["one_minus_gae_lambda"] = trial.suggest_float("one_minus_gae_lambda", 0.0001, 0.1, log=True)
    trial.set_user_attr("gamma", 1 - params["one_minus_gamma"])
    return _with_envs_per_worker(convert_a3c_params(params), n_envs)


def convert_a3c_lstm_params(params: dict[str, Any]) -> dict[str, Any]:
    """Recurrent A3C keyword arguments from a trial's ``params``: A3C's, and the LSTM's size."""
    hyperparams = dict(params)
    lstm_hidden_size = hyperparams.pop("lstm_hidden_size")
    hyperparams = convert_a3c_params(hyperparams)
    hyperparams["policy_kwargs"] = {**hyperparams.get("policy_kwargs", {}), "lstm_hidden_size": lstm_hidden_size}
    return hyperparams


def sample_a3c_lstm_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """Sampler for recurrent A3C: A3C's parameters, and the LSTM's size."""
    hyperparams = sample_a3c_params(trial, n_actions, n_envs, additional_args)
    lstm_hidden_size = trial.suggest_categorical("lstm_hidden_size", [32, 64, 128, 256])
    hyperparams["policy_kwargs"] = {**hyperparams.get("policy_kwargs", {}), "lstm_hidden_size": lstm_hidden_size}
    return hyperparams


def convert_offpac_params(params: dict[str, Any]) -> dict[str, Any]:
    """OffPolicyAC keyword arguments from a trial's ``params``."""
    hyperparams = _convert_common(params)
    epsilon = hyperparams.pop("behavior_epsilon", 0.0)
    hyperparams["behavior_policy"] = "target" if epsilon == 0.0 else ("epsilon", epsilon)
    if "buffer_size_pow" in hyperparams:
        hyperparams["buffer_size"] = 10 ** hyperparams.pop("buffer_size_pow")
    return hyperparams


def sample_offpac_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """Sampler for OffPolicyAC: the shared ones plus truncation, trace lambda, replay and behaviour exploration."""
    params = _sample_common(trial, n_actions, n_envs, [4, 8, 16, 32])
    params["rho_bar"] = trial.suggest_categorical("rho_bar", [0.5, 1.0, 2.0, 5.0])
    params["c_bar"] = trial.suggest_categorical("c_bar", [0.5, 1.0])
    params["trace_lambda"] = trial.suggest_categorical("trace_lambda", [0.8, 0.9, 0.95, 1.0])
    params["replay_ratio"] = trial.suggest_categorical("replay_ratio", [0.0, 0.5, 1.0, 2.0, 4.0])
    params["buffer_size_pow"] = trial.suggest_int("buffer_size_pow", 4, 6)
    params["batch_size"] = trial.suggest_categorical("batch_size", [32, 64, 128, 256])
    params["behavior_epsilon"] = trial.suggest_categorical("behavior_epsilon", [0.0, 0.05, 0.1, 0.2, 0.3])
    trial.set_user_attr("gamma", 1 - params["one_minus_gamma"])
    return _with_envs_per_worker(convert_offpac_params(params), n_envs)


def convert_impala_params(params: dict[str, Any]) -> dict[str, Any]:
    """IMPALA keyword arguments from a trial's ``params``."""
    return _convert_common(params)


def sample_impala_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for IMPALA: the shared ones (the unroll length as ``n_steps``; its learner applies every
    update, so no ``update_mode``; its actors take no gSDE), plus the batch of trajectories per update
    and the traces' truncation.
    """
    params = _sample_common(trial, n_actions, n_envs, [5, 10, 20, 50], update_modes=False, gsde=False)
    params["batch_size"] = trial.suggest_categorical("batch_size", [1, 2, 4, 8, 16, 32])
    params["c_bar"] = trial.suggest_categorical("c_bar", [0.5, 1.0])
    trial.set_user_attr("gamma", 1 - params["one_minus_gamma"])
    return _with_envs_per_worker(convert_impala_params(params), n_envs)


def convert_async_q_params(params: dict[str, Any]) -> dict[str, Any]:
    """AsyncQLearning / AsyncSARSA keyword arguments from a trial's ``params``."""
    hyperparams = dict(params)
    hyperparams["gamma"] = 1 - hyperparams.pop("one_minus_gamma")
    # A target cannot look past its segment: n_steps is at most train_freq (the paper's n-step Q).
    hyperparams["n_steps"] = min(hyperparams["n_steps"], hyperparams["train_freq"])
    if "net_arch" in hyperparams:
        hyperparams["policy_kwargs"] = dict(net_arch=Q_NET_ARCH[hyperparams.pop("net_arch")])
    return hyperparams


def sample_async_q_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for AsyncQLearning and AsyncSARSA: segment length, return length, gamma, lr, target
    refresh, exploration schedule, gradient clipping, network, workers. The workers' final epsilons
    keep the paper's set and probabilities.
    """
    params: dict[str, Any] = {
        "train_freq": trial.suggest_categorical("train_freq", [4, 5, 8, 16, 32]),
        "n_steps": trial.suggest_categorical("n_steps", [1, 2, 4, 8, 16, 32]),
        "one_minus_gamma": trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 0.003, log=True),
        "target_update_interval": trial.suggest_int("target_update_interval", 100, 20_000, log=True),
        "exploration_fraction": trial.suggest_float("exploration_fraction", 0.05, 0.5),
        "max_grad_norm": trial.suggest_float("max_grad_norm", 0.3, 10.0, log=True),
        "net_arch": trial.suggest_categorical("net_arch", list(Q_NET_ARCH)),
        **_sample_layout(trial, n_envs),
    }
    trial.set_user_attr("gamma", 1 - params["one_minus_gamma"])
    return _with_envs_per_worker(convert_async_q_params(params), n_envs)


SAMPLERS = {
    "a3c": sample_a3c_params,
    "a3c_lstm": sample_a3c_lstm_params,
    "offpac": sample_offpac_params,
    "impala": sample_impala_params,
    "async_q": sample_async_q_params,
    "async_sarsa": sample_async_q_params,
}
CONVERTERS = {
    "a3c": convert_a3c_params,
    "a3c_lstm": convert_a3c_lstm_params,
    "offpac": convert_offpac_params,
    "impala": convert_impala_params,
    "async_q": convert_async_q_params,
    "async_sarsa": convert_async_q_params,
}
