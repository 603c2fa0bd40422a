"""OffPolicyAC's math on hand-computed examples: V-trace, the Off-PAC reduction, behaviour log-probs, replay memory."""

import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_async.offpac.behavior import EpsilonBehavior, TargetBehavior, UniformBehavior
from sb3_async.offpac.loss import OffPolicyTrajectories, behaviour_kl, effective_sample_size, off_policy_ac_loss, vtrace
from sb3_async.offpac.worker import SegmentMemory

INF = float("inf")


def column(*values: float) -> th.Tensor:
    """A [T, 1] tensor: T steps of one env."""
    return th.tensor(values, dtype=th.float32).unsqueeze(1)


# Three steps, gamma 0.9, values V(x_0..x_2) = 1, 2, 3 and V(x_3) = 4; the episode ends at step 1,
# and pi/b = 2, 0.5, 1.5. Worked by hand from IMPALA's recursion
#   v_t - V(x_t) = rho_t delta_t + gamma c_t (v_{t+1} - V(x_{t+1})),
#   advantage_t  = rho_t (r_t + gamma v_{t+1} - V(x_t)).
THREE_STEPS = dict(
    behavior_log_probs=column(0.0, 0.0, 0.0),
    target_log_probs=column(math.log(2.0), math.log(0.5), math.log(1.5)),
    rewards=column(1.0, 0.0, 2.0),
    dones=column(0.0, 1.0, 0.0),
    values=column(1.0, 2.0, 3.0),
    bootstrap_value=th.tensor([4.0]),
    gamma=0.9,
)


def test_vtrace_truncated_at_one_on_a_hand_computed_segment():
    # rho = c = min(1, pi/b) = 1, 0.5, 1; deltas = 1.8, -1.0, 2.6 (step 1 ends its episode: no bootstrap)
    # corrections: 2.6; -1.0 (the trace stops at the episode end); 1.8 + 0.9 * 1 * -1.0 = 0.9
    returns = vtrace(**THREE_STEPS, rho_bar=1.0, c_bar=1.0)
    assert returns.vs.flatten().tolist() == pytest.approx([1.9, 1.0, 5.6])
    # advantages: 1 * (1 + 0.9 * v_1 - 1) = 0.9; 0.5 * (0 - 2) = -1.0; 1 * (2 + 0.9 * 4 - 3) = 2.6
    assert returns.pg_advantages.flatten().tolist() == pytest.approx([0.9, -1.0, 2.6])
    assert returns.rhos.flatten().tolist() == pytest.approx([2.0, 0.5, 1.5])


def test_vtrace_untruncated_on_a_hand_computed_segment():
    # deltas = 2 * 1.8, 0.5 * -2, 1.5 * 2.6 = 3.6, -1.0, 3.9; corrections 3.9, -1.0, 3.6 + 0.9 * 2 * -1.0 = 1.8
    returns = vtrace(**THREE_STEPS, rho_bar=INF, c_bar=INF)
    assert returns.vs.flatten().tolist() == pytest.approx([2.8, 1.0, 6.9])
    assert returns.pg_advantages.flatten().tolist() == pytest.approx([2 * (1 + 0.9 * 1.0 - 1), -1.0, 1.5 * (2 + 0.9 * 4 - 3)])


def test_trace_lambda_scales_the_traces_on_a_hand_computed_segment():
    # c = 0.5 * min(1, pi/b) = 0.5, 0.25, 0.5; deltas as truncated at one: 1.8, -1.0, 2.6.
    # corrections: 2.6; -1.0 (episode end); 1.8 + 0.9 * 0.5 * -1.0 = 1.35. Only v_0 looks through a trace.
    returns = vtrace(**THREE_STEPS, rho_bar=1.0, c_bar=1.0, trace_lambda=0.5)
    assert returns.vs.flatten().tolist() == pytest.approx([2.35, 1.0, 5.6])
    assert returns.pg_advantages.flatten().tolist() == pytest.approx([0.9, -1.0, 2.6])  # uses v_{t+1}, unchanged here
    one_step = vtrace(**THREE_STEPS, rho_bar=1.0, c_bar=1.0, trace_lambda=0.0)
    assert one_step.vs.flatten().tolist() == pytest.approx([1.0 + 1.8, 1.0, 5.6])  # V + rho delta: TD(0)


def test_effective_sample_size_from_equal_weights_to_none():
    assert effective_sample_size(th.full((4,), 0.7)).item() == pytest.approx(1.0)  # pi = b up to scale
    assert effective_sample_size(th.tensor([2.0, 0.0, 0.0, 0.0])).item() == pytest.approx(0.25)  # one weight carries all
    assert effective_sample_size(th.tensor([1.0, 1.0, 0.0, 0.0])).item() == pytest.approx(0.5)
    # pi(a|s) underflows to 0 on every action b took (seen on Pendulum: a narrow pi, uniform b): no weight
    # at all, not 0/0. A NaN here turned every logged mean it fell into NaN.
    rhos = th.exp(th.tensor([-200.0, -150.0, -300.0]))
    assert (rhos == 0).all()
    assert effective_sample_size(rhos).item() == 0.0


def test_behaviour_kl_on_a_hand_computed_pair():
    # b = (0.5, 0.5), pi = (0.9, 0.1): KL(b || pi) = 0.5 ln(0.5 / 0.9) + 0.5 ln(0.5 / 0.1) = 0.51083.
    # With each action drawn once (b's own frequencies) the k3 terms rho - 1 - ln rho sum to it exactly:
    # (0.8 - ln 1.8) + (-0.8 - ln 0.2).
    log_rhos = th.log(th.tensor([0.9 / 0.5, 0.1 / 0.5]))
    assert behaviour_kl(log_rhos).item() == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), rel=1e-6)
    assert behaviour_kl(th.zeros(5)).item() == 0.0  # pi = b
    assert behaviour_kl(th.tensor([0.3, -0.3])).item() > 0  # every term is >= 0, unlike a mean of -log rho


def test_one_step_vtrace_is_the_off_pac_td_error():
    # r = 1, gamma = 0.9, V(s) = 0.5, V(s') = 2, pi/b = 0.6/0.3 = 2: delta = 2.3, rho delta = 4.6
    returns = vtrace(
        behavior_log_probs=column(math.log(0.3)),
        target_log_probs=column(math.log(0.6)),
        rewards=column(1.0),
        dones=column(0.0),
        values=column(0.5),
        bootstrap_value=th.tensor([2.0]),
        gamma=0.9,
        rho_bar=INF,
        c_bar=INF,
    )
    assert returns.pg_advantages.item() == pytest.approx(4.6)
    assert returns.vs.item() == pytest.approx(0.5 + 4.6)


def test_one_step_loss_gradient_is_the_off_pac_update():
    """-grad L = rho delta (grad log pi(a|s) + grad V(s)): the actor and critic rules with beta = alpha."""
    th.manual_seed(0)
    policy = ActorCriticPolicy(spaces.Box(-1, 1, (3,)), spaces.Discrete(2), lambda _: 0.0, net_arch=[8])
    s, s_next = th.tensor([[0.1, -0.2, 0.3]]), th.tensor([[0.4, 0.0, -0.5]])
    action, reward, gamma, log_b = th.tensor([1]), 1.0, 0.9, math.log(0.25)

    segment = OffPolicyTrajectories(
        observations=th.stack([s, s_next]),  # [T + 1 = 2, B = 1, 3]
        actions=action.view(1, 1),
        rewards=column(reward),
        dones=column(0.0),
        behavior_log_probs=column(log_b),
    )
    loss, _ = off_policy_ac_loss(policy, segment, gamma=gamma, rho_bar=INF, c_bar=INF, ent_coef=0.0, vf_coef=1.0)
    policy.zero_grad()
    loss.backward()
    loss_gradient = [p.grad.clone() for p in policy.parameters()]

    # The textbook rule, computed independently.
    values, log_pi, _ = policy.evaluate_actions(s, action)
    with th.no_grad():
        rho = math.exp(log_pi.item() - log_b)
        delta = reward + gamma * policy.predict_values(s_next).item() - values.item()
    policy.zero_grad()
    (log_pi.sum() + values.sum()).backward()
    for gradient, param in zip(loss_gradient, policy.parameters(), strict=False):
        assert th.allclose(-gradient, rho * delta * param.grad, atol=1e-6)
    assert rho * delta != 0


def test_epsilon_behavior_log_prob_is_the_mixture():
    th.manual_seed(0)
    policy = ActorCriticPolicy(spaces.Box(-1, 1, (2,)), spaces.Discrete(3), lambda _: 0.0, net_arch=[8])
    behavior = EpsilonBehavior(0.3, spaces.Discrete(3))
    obs = np.random.default_rng(0).uniform(-1, 1, size=(64, 2)).astype(np.float32)
    actions, log_b = behavior.act(obs, policy)
    with th.no_grad():
        pi = policy.get_distribution(th.as_tensor(obs)).distribution.probs.numpy()
    expected = 0.7 * pi[np.arange(64), actions] + 0.3 / 3
    assert np.allclose(np.exp(log_b), expected, atol=1e-6)


@pytest.mark.parametrize("action_space", [spaces.Discrete(3), spaces.Box(-1, 1, (2,))], ids=["categorical", "gaussian"])
def test_target_behavior_draws_as_the_policy_and_records_its_log_probs(action_space):
    th.manual_seed(0)
    policy = ActorCriticPolicy(spaces.Box(-1, 1, (2,)), action_space, lambda _: 0.0, net_arch=[8])
    obs = np.random.default_rng(0).uniform(-1, 1, size=(64, 2)).astype(np.float32)
    th.manual_seed(1)
    actions, log_b = TargetBehavior().act(obs, policy)
    th.manual_seed(1)
    with th.no_grad():
        distribution = policy.get_distribution(th.as_tensor(obs))
        expected_actions = distribution.get_actions()
        expected_log_probs = distribution.log_prob(expected_actions)
    np.testing.assert_array_equal(actions, expected_actions.numpy())
    np.testing.assert_allclose(log_b, expected_log_probs.numpy(), atol=1e-6)


def test_uniform_behavior_on_a_box_is_uniform_in_its_bounds():
    box = spaces.Box(low=np.array([-2.0, 0.0], np.float32), high=np.array([2.0, 0.5], np.float32))
    behavior = UniformBehavior(box)
    actions, log_b = behavior.act(np.zeros((1000, 3), dtype=np.float32), target=None)
    assert box.contains(actions[0]) and np.all(actions >= box.low) and np.all(actions <= box.high)
    assert np.allclose(log_b, -math.log(4.0 * 0.5))
    assert behavior.log_probs(np.array([[3.0, 0.1]]))[0] == -np.inf  # outside the bounds, u(a) = 0
    with pytest.raises(ValueError, match="bounded"):
        UniformBehavior(spaces.Box(-np.inf, np.inf, (1,)))


def test_segment_memory_keeps_whole_trajectories_first_in_first_out():
    memory = SegmentMemory(capacity=3, n_steps=2, observation_space=spaces.Box(-10, 10, (1,)), action_space=spaces.Discrete(2))
    for start in (0.0, 100.0):  # two segments of 2 envs: the first env-0 trajectory is pushed out
        observations = th.tensor([[[start + 0], [start + 1]], [[start + 2], [start + 3]], [[start + 4], [start + 5]]])
        memory.add(
            OffPolicyTrajectories(
                observations=observations,  # [T + 1 = 3, B = 2, 1]
                actions=th.tensor([[0, 1], [1, 0]]),
                rewards=observations[:2, :, 0],  # reward = first observation, to recognise the trajectory
                dones=th.zeros(2, 2),
                behavior_log_probs=th.zeros(2, 2),
            )
        )
    assert memory.size == 3 and memory.n_transitions == 6
    sampled = memory.sample(64, np.random.default_rng(0))
    assert sampled.observations.shape == (3, 64, 1) and sampled.rewards.shape == (2, 64)
    starts = set(sampled.observations[0, :, 0].tolist())
    assert starts == {1.0, 100.0, 101.0}  # env 1 of the first segment, both envs of the second
    for i in range(64):
        first = sampled.observations[0, i, 0].item()
        assert sampled.observations[:, i, 0].tolist() == [first, first + 2, first + 4]
        assert sampled.rewards[:, i].tolist() == [first, first + 2]
