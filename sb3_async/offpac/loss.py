"""
The off-policy actor-critic loss, written as in the papers.

Off-PAC (Degris, White & Sutton 2012), for a transition (s, a, r, s') drawn by a behaviour policy b::

    rho   = pi(a|s) / b(a|s)
    delta = r + gamma V(s') - V(s)
    actor:  theta <- theta + alpha rho delta grad log pi(a|s)
    critic: w     <- w     + beta  rho delta grad V(s)

V-trace (Espeholt et al. 2018, IMPALA eq. 1) extends it to segments of n steps, with the importance
weights truncated at ``rho_bar`` (in the TD errors) and ``c_bar`` (in the trace)::

    v_t - V(x_t) = rho_t delta_t + gamma c_t (v_{t+1} - V(x_{t+1}))
    actor:  rho_t (r_t + gamma v_{t+1} - V(x_t)) grad log pi(a_t|x_t)
    critic: (v_t - V(x_t)) grad V(x_t)

With ``n_steps=1`` and ``rho_bar = c_bar = inf``, ``v_{t+1}`` is just ``V(x_{t+1})`` and both lines
are exactly the Off-PAC rule above (``tests/test_offpac_loss.py`` checks it by hand).

``trace_lambda`` scales the traces, ``c_t = lambda min(c_bar, rho_t)``: IMPALA's lambda, and the
form of Retrace's traces (Munos et al. 2016). ``lambda < 1`` shortens how far a target looks ahead
through replayed behaviour, trading variance for bias towards the current V.
"""

from dataclasses import dataclass

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy


@dataclass
class OffPolicyTrajectories:
    """``T`` steps of ``B`` envs (or replayed trajectories), time first, as acted by the behaviour policy."""

    observations: th.Tensor | dict[str, th.Tensor]  # [T + 1, B, ...]: the last row is the bootstrap state
    actions: th.Tensor  # [T, B, ...] as the target policy's distribution reads them
    rewards: th.Tensor  # [T, B], time-limit bootstraps already folded in (see common/rollout.py)
    dones: th.Tensor  # [T, B] 1.0 where the episode ended at step t (the next row starts a new one)
    behavior_log_probs: th.Tensor  # [T, B] log b(a_t|x_t), recorded when acting


@dataclass
class VTraceReturns:
    vs: th.Tensor  # [T, B] V-trace value targets v_t
    pg_advantages: th.Tensor  # [T, B] rho_t (r_t + gamma v_{t+1} - V(x_t))
    rhos: th.Tensor  # [T, B] untruncated importance weights pi/b


@th.no_grad()
def vtrace(
    behavior_log_probs: th.Tensor,
    target_log_probs: th.Tensor,
    rewards: th.Tensor,
    dones: th.Tensor,
    values: th.Tensor,
    bootstrap_value: th.Tensor,
    gamma: float,
    rho_bar: float,
    c_bar: float,
    trace_lambda: float = 1.0,
) -> VTraceReturns:
    """
    V-trace targets and policy-gradient advantages. Tensors are ``[T, B]`` (``bootstrap_value``: ``[B]``).
    An episode end at step t stops both the discount and the trace there.
    """
    rhos = th.exp(target_log_probs - behavior_log_probs)
    clipped_rhos = rhos.clamp(max=rho_bar)
    cs = trace_lambda * rhos.clamp(max=c_bar)
    discounts = gamma * (1.0 - dones)
    next_values = th.cat([values[1:], bootstrap_value.unsqueeze(0)])
    deltas = clipped_rhos * (rewards + discounts * next_values - values)

    corrections = th.zeros_like(values)  # v_t - V(x_t)
    carry = th.zeros_like(bootstrap_value)
    for t in reversed(range(values.shape[0])):
        carry = deltas[t] + discounts[t] * cs[t] * carry
        corrections[t] = carry
    vs = values + corrections

    next_vs = th.cat([vs[1:], bootstrap_value.unsqueeze(0)])
    pg_advantages = clipped_rhos * (rewards + discounts * next_vs - values)
    return VTraceReturns(vs=vs, pg_advantages=pg_advantages, rhos=rhos)


def behaviour_kl(log_rhos: th.Tensor) -> th.Tensor:
    """
    KL(b || pi) estimated from actions drawn by b, with ``log_rhos = log pi(a|s) - log b(a|s)``:
    the mean of ``rho - 1 - log rho`` (Schulman's k3). Each term is >= 0, its mean is unbiased, and it is
    0 only where pi = b; a plain mean of ``-log rho`` is unbiased too but has terms of both signs.
    An action b takes that pi cannot (rho = 0) makes it infinite, which is what the KL is.
    """
    rhos = th.exp(log_rhos)
    return (rhos - 1.0 - log_rhos).mean()


def effective_sample_size(rhos: th.Tensor) -> th.Tensor:
    """
    Kish's effective sample size of importance weights, as a fraction of their number:
    ``(sum rho)^2 / (n sum rho^2)``. 1 when every weight is equal (pi = b), ``1/n`` when one weight
    carries all, and 0 when none carries any (every rho is 0, e.g. a narrow Gaussian pi far from
    uniform actions, where pi(a|s) underflows), where the formula alone would give 0/0.
    """
    sum_of_squares = rhos.pow(2).sum()
    if sum_of_squares == 0:
        return th.zeros(())
    return rhos.sum().pow(2) / (sum_of_squares * rhos.numel())


def off_policy_ac_loss(
    policy: ActorCriticPolicy,
    segment: OffPolicyTrajectories,
    gamma: float,
    rho_bar: float,
    c_bar: float,
    ent_coef: float,
    vf_coef: float,
    trace_lambda: float = 1.0,
    stats_section: str = "offpac",
) -> tuple[th.Tensor, dict[str, float]]:
    """
    The loss whose gradient is the V-trace actor-critic update, averaged over the segment::

        L = -pg_advantage log pi(a|s)  +  vf_coef * 1/2 (v - V(s))^2  -  ent_coef * H(pi(.|s))

    (the 1/2 makes the critic's step ``vf_coef * rho * delta * grad V`` exactly, as in Off-PAC, and
    is IMPALA's baseline loss). The importance weights' statistics are logged under ``stats_section``.
    """
    n_steps, n_envs = segment.rewards.shape
    observations = segment.observations
    flat_obs: th.Tensor | dict[str, th.Tensor]
    last_obs: th.Tensor | dict[str, th.Tensor]
    if isinstance(observations, dict):
        flat_obs = {key: obs[:n_steps].flatten(0, 1) for key, obs in observations.items()}
        last_obs = {key: obs[n_steps] for key, obs in observations.items()}
    else:
        flat_obs, last_obs = observations[:n_steps].flatten(0, 1), observations[n_steps]
    actions = segment.actions.flatten(0, 1)
    actions = actions.long() if isinstance(policy.action_space, spaces.Discrete) else actions.float()
    values, log_probs, entropy = policy.evaluate_actions(flat_obs, actions)
    values, log_probs = values.view(n_steps, n_envs), log_probs.view(n_steps, n_envs)
    with th.no_grad():
        bootstrap_value = policy.predict_values(last_obs).flatten()

    returns = vtrace(
        segment.behavior_log_probs,
        log_probs.detach(),
        segment.rewards,
        segment.dones,
        values.detach(),
        bootstrap_value,
        gamma,
        rho_bar,
        c_bar,
        trace_lambda,
    )
    policy_loss = -(returns.pg_advantages * log_probs).mean()
    value_loss = 0.5 * (returns.vs - values).pow(2).mean()
    entropy_loss = -entropy.mean() if entropy is not None else log_probs.mean()
    loss = policy_loss + vf_coef * value_loss + ent_coef * entropy_loss

    rhos = returns.rhos.flatten()
    log_rhos = log_probs.detach().flatten() - segment.behavior_log_probs.flatten()
    stats = {
        "policy_loss": policy_loss.item(),
        "value_loss": value_loss.item(),
        "entropy_loss": entropy_loss.item(),
        f"{stats_section}/rho_mean": rhos.mean().item(),
        f"{stats_section}/rho_clipped_fraction": (rhos > rho_bar).float().mean().item(),
        f"{stats_section}/effective_sample_size": effective_sample_size(rhos).item(),
        f"{stats_section}/behaviour_kl": behaviour_kl(log_rhos).item(),
    }
    if hasattr(policy, "log_std"):
        stats["std"] = th.exp(policy.log_std).mean().item()
    return loss, stats
