"""``digits_cnn`` and ``digits_cnn_b``: two small grayscale CNNs trained on real handwritten digits, offline.

scikit-learn's ``load_digits`` (1,797 real 8×8 digits, bundled with scikit-learn) upsampled to 28×28 px
(white digit on black, as MNIST). The two networks differ only in their training seed, so one can check
that a class render of the first is recognised by the second. ``scripts/train_digits.py`` trained them;
the weights (float16, a few tens of KB) are in ``data/digits_cnn_{a,b}.pt``.
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn

from .checkpoints import load_by_name
from .model import Model
from .registry import register_model

INPUT_SIZE = 28
CLASSES = [str(d) for d in range(10)]


class DigitsCNN(nn.Module):
    """Three 3×3 convolutions (16, 32, 32 filters; max-pooling after the first two), global average pooling
    and a linear head: 1×28×28 → 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        return self.fc(self.flatten(self.gap(x)))


def digits_model(net: nn.Module, name: str, weights: str = "untrained") -> Model:
    """The digits network as a :class:`Model`: 1 channel, 28 px, normalised with mean 0.5 / std 0.5."""
    return Model(
        net,
        name,
        mean=(0.5,),
        std=(0.5,),
        input_size=INPUT_SIZE,
        resize_size=INPUT_SIZE,
        in_channels=1,
        weights=weights,
        categories=list(CLASSES),
    )


def _loader(variant: str, name: str):
    def load(weights: str | None = None, trust_checkpoint: bool = False) -> Model:
        from .checkpoints import read_state_dict

        path = weights or str(resources.files("filterscope") / "data" / f"digits_cnn_{variant}.pt")
        net = DigitsCNN()
        state = {k: v.float() for k, v in read_state_dict(path, trust_checkpoint).items()}
        load_by_name(net, state, path)
        return digits_model(net, name, path)

    return load


register_model("digits_cnn")(_loader("a", "digits_cnn"))
register_model("digits_cnn_b")(_loader("b", "digits_cnn_b"))
