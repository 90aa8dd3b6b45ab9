"""A tiny hand-built CNN for the tests where the real model is not the point (the render loop's mechanics,
hooks, caching): a forward+backward costs microseconds instead of EfficientNet-Lite's ~0.1 s."""

import torch
from torch import nn


class TinyCNN(nn.Module):
    """RGB 32×32 → 10 logits: ``conv1`` (8) → ``bn1`` → ``relu1`` → pool → ``conv2`` (16) → ``bn2`` → ``relu2``
    → pool → ``conv3`` (16, 8×8 maps) → ``relu3`` → global average pool → ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc(self.flatten(self.gap(self.relu3(self.conv3(x)))))


def tiny_net(seed: int = 0) -> TinyCNN:
    """The network with seeded random weights and non-trivial batch-norm statistics (as in a trained net),
    built without touching the global random state. He (Kaiming) initialisation keeps activations of order 1
    through the layers, so gradient ascent moves them clearly (PyTorch's default init shrinks them ~3× per
    layer and the logits barely respond)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = TinyCNN()
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu" if isinstance(m, nn.Conv2d) else "linear")
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return net.eval()
