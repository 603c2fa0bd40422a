"""Features extractors that SB3 lacks: small images (MinAtar's 10x10 grids), for every algorithm's CnnPolicy."""

import inspect
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from torch import nn

# NatureCNN's kernels (8x8 stride 4, 4x4 stride 2, 3x3 stride 1) leave nothing of an image smaller than this.
NATURE_CNN_MIN_SIZE = 36


def channels_first(shape: tuple[int, ...]) -> bool:
    """Whether an image of ``shape`` is (C, H, W): only when its first dimension is strictly the smallest.
    SB3 transposes uint8 images to channels-first; everything else arrives as the env made it, (H, W, C)."""
    return shape[0] < min(shape[1:])


class MinAtarCNN(BaseFeaturesExtractor):
    """
    The network of MinAtar's baselines (Young & Tian 2019, https://arxiv.org/abs/1903.03176):
    one 3x3 convolution with 16 channels, stride 1, then ``features_dim`` (128) units, ReLU after each.

    It reads images smaller than SB3's NatureCNN can (MinAtar's are 10x10), channels first or last
    (MinAtar's are last, and bool), of any dtype, unscaled.

    :param observation_space: a 3-dimensional Box
    :param features_dim: Number of features extracted (units of the fully connected layer)
    :param n_filters: Number of channels of the convolution
    :param channels_last: Whether images are (H, W, C); by default, unless the first dimension is strictly the smallest
    """

    def __init__(
        self, observation_space: spaces.Box, features_dim: int = 128, n_filters: int = 16, channels_last: bool | None = None
    ) -> None:
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            raise ValueError(f"MinAtarCNN reads 3-dimensional Box observations (images), got {observation_space}")
        super().__init__(observation_space, features_dim)
        shape = observation_space.shape
        self.channels_last = not channels_first(shape) if channels_last is None else channels_last
        n_channels, height, width = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        self.cnn = nn.Sequential(nn.Conv2d(n_channels, n_filters, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        n_flatten = n_filters * (height - 2) * (width - 2)
        self.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        if self.channels_last:
            observations = observations.permute(0, 3, 1, 2)
        return self.linear(self.cnn(observations.float()))


def small_image_policy_kwargs(
    policy_class: type, observation_space: spaces.Space, policy_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """
    ``policy_kwargs`` with :class:`MinAtarCNN` as features extractor, when the policy would use NatureCNN
    on images too small for it; else ``policy_kwargs`` unchanged. A user's ``features_extractor_class`` always wins.
    """
    if "features_extractor_class" in policy_kwargs or not isinstance(observation_space, spaces.Box):
        return policy_kwargs
    shape = observation_space.shape
    if len(shape) != 3:
        return policy_kwargs
    parameter = inspect.signature(policy_class).parameters.get("features_extractor_class")
    if parameter is None or parameter.default is not NatureCNN:
        return policy_kwargs
    height, width = shape[1:] if channels_first(shape) else shape[:2]
    if min(height, width) >= NATURE_CNN_MIN_SIZE:
        return policy_kwargs
    return {**policy_kwargs, "features_extractor_class": MinAtarCNN}
