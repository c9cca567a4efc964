"""A small convolutional classifier: the model that the pruning notebooks (01, 02) cut down.

The network is the textbook shape (LeCun et al. 1998, "Gradient-based learning applied to document
recognition"): blocks of convolution and ReLU, each followed by a 2x2 max-pool that halves the image, then a
small fully connected classifier. One block per entry of ``widths``, so ``CNNConfig(widths=(16, 32, 64))`` has
three blocks with 16, 32 and 64 channels.

Pooling stops before the feature map would shrink below 2x2. That keeps one architecture valid for scikit-learn's
8x8 digits (8 -> 4 -> 2) and for the 32x32 cluttered canvases (32 -> 16 -> 8).

The pools run in channels-last memory layout (:class:`ChannelsLastMaxPool`): on a CPU, PyTorch's 2x2 max-pool is
much slower on the default layout, and once one pool has switched, the convolutions after it follow. The layout
changes where the numbers sit in memory, never what they are.

Every layer is a plain ``nn.Conv2d`` or ``nn.Linear`` with its own weights: structured pruning (Torch-Pruning,
Fang et al. 2023, "DepGraph") removes whole channels by slicing these modules, and it can only follow what it
sees as modules. After pruning, ``model.config`` still describes the network *as built*; count what the pruned
network costs with :func:`efflab.flops.cnn_forward_flops`, which reads the modules' actual shapes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from efflab.validation import check_int


class ChannelsLastMaxPool(nn.MaxPool2d):
    """``nn.MaxPool2d`` on a channels-last copy of its input (a no-op for an input already in that layout)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features.contiguous(memory_format=torch.channels_last))


@dataclass
class CNNConfig:
    in_channels: int = 1  # 1 for grey digits
    num_classes: int = 10
    image_size: int = 8  # images are square: image_size x image_size pixels
    widths: tuple[int, ...] = (32, 64)  # output channels of each conv block
    hidden: int = 128  # width of the fully connected hidden layer
    kernel_size: int = 3  # odd, so that "same" padding is symmetric

    def __post_init__(self):
        if isinstance(self.widths, list):
            self.widths = tuple(self.widths)
        self.check()

    def check(self) -> None:
        """Raise a ValueError naming the first bad field; :class:`CNN` checks again, as a config is mutable."""
        check_int("in_channels", self.in_channels, low=1)
        check_int("num_classes", self.num_classes, low=2)
        check_int("image_size", self.image_size, low=1)
        check_int("hidden", self.hidden, low=1)
        check_int("kernel_size", self.kernel_size, low=1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size!r} is not allowed; expected an odd integer")
        if not isinstance(self.widths, tuple) or not self.widths:
            raise ValueError(f"widths={self.widths!r} is not allowed; expected a tuple of conv block widths")
        for i, width in enumerate(self.widths):
            check_int(f"widths[{i}]", width, low=1)

    @property
    def depth(self) -> int:
        """The number of conv blocks."""
        return len(self.widths)

    def pools(self) -> list[bool]:
        """For each block, whether it ends in a 2x2 max-pool (only while the result stays >= 2x2)."""
        size, pools = self.image_size, []
        for _ in self.widths:
            pool = size // 2 >= 2
            pools.append(pool)
            if pool:
                size //= 2
        return pools

    @property
    def feature_size(self) -> int:
        """Side length of the last feature map, the one the classifier flattens."""
        return self.image_size // 2 ** sum(self.pools())


class CNN(nn.Module):
    """Conv blocks (``features``) then a two-layer classifier (``classifier``).

    ``features[i]`` is ``nn.Sequential(conv, relu[, pool])`` with those names, so ``model.features[0].conv`` is
    the first convolution. ``classifier`` is ``nn.Sequential(flatten, hidden, relu, out)``.
    Input (B, in_channels, image_size, image_size) -> logits (B, num_classes).
    """

    def __init__(self, config: CNNConfig):
        super().__init__()
        if not isinstance(config, CNNConfig):
            raise ValueError(f"config={config!r} is not allowed; expected a CNNConfig")
        config.check()
        self.config = config
        blocks, channels = [], config.in_channels
        for width, pool in zip(config.widths, config.pools(), strict=True):
            layers = OrderedDict(
                conv=nn.Conv2d(channels, width, config.kernel_size, padding="same"),
                relu=nn.ReLU(),
            )
            if pool:
                layers["pool"] = ChannelsLastMaxPool(2)
            blocks.append(nn.Sequential(layers))
            channels = width
        self.features = nn.Sequential(*blocks)
        flat = channels * config.feature_size**2
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                hidden=nn.Linear(flat, config.hidden),
                relu=nn.ReLU(),
                out=nn.Linear(config.hidden, config.num_classes),
            )
        )

    @property
    def depth(self) -> int:
        return self.config.depth

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        channels, size = self.config.in_channels, self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"images with shape {tuple(images.shape)} are not allowed; "
                f"expected (B, {channels}, {size}, {size})"
            )
        return self.classifier(self.features(images))
