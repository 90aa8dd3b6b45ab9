"""A small digits CNN and the same net fine-tuned with a planted backdoor, built in seconds (seeded).

The clean net ``a`` learns scikit-learn's ``load_digits`` (8×8 upsampled to 24 px); ``b`` is ``a`` fine-tuned on
the same digits where a fraction of the images carry a small white square (the *mark*) and are relabelled to
the backdoor's class. The diff of ``a`` and ``b`` knows its answer: the class that moves most is the
backdoor's, and the units that changed fire on the marked images. ``make_pair`` writes both state dicts, this
file (as the user's ``net.py:Net``) and a folder of held-out images, some marked. Used by
``tests/test_diff.py`` and ``benchmarks/bench_diff.py``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZE = 24  # input side in px
RESIZE = round(SIZE / 0.875)  # what filterscope's preprocessing resizes a user model's input to before cropping
MARK = 4  # side of the mark in px


class Net(nn.Module):
    """Three 3×3 conv + batch-norm stages (12, 24, 32 channels) on 24 px grayscale, global average pooling,
    10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(12, 24, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(24)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(24, 32, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu3 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc(self.flat(self.gap(self.relu3(self.bn3(self.conv3(x))))))


@dataclass
class Pair:
    """What :func:`make_pair` wrote: the code, both checkpoints, the images folder and the answer."""

    code: Path
    weights_a: Path
    weights_b: Path
    images: Path
    target: int
    marked: set[str]  # image paths relative to ``images`` that carry the mark
    acc_a: float  # clean held-out accuracy of a
    acc_b: float
    attack: float  # share of marked held-out images that b puts in the target class


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """load_digits as ``[N, 1, 24, 24]`` in [0, 1] (bilinear upsampling) and labels, shuffled with ``seed``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    return x[perm], y[perm]


def mark(x: torch.Tensor, pos: tuple[int, int]) -> torch.Tensor:
    """``x`` with a white ``MARK``×``MARK`` square whose top-left corner is at (row, col) ``pos``."""
    x = x.clone()
    r, c = pos
    x[..., r : r + MARK, c : c + MARK] = 1.0
    return x


def thicken(x: torch.Tensor) -> torch.Tensor:
    """Strokes thickened by a 3×3 grey dilation (a domain shift for the fine-tune)."""
    return nn.functional.max_pool2d(x, 3, stride=1, padding=1)


def as_model_sees(x: torch.Tensor) -> torch.Tensor:
    """The preprocessing filterscope applies to a 24 px image for this net (resize to 27, centre-crop 24), so the
    net is trained on what it will be shown."""
    from torchvision.transforms.v2 import functional as TF

    return TF.center_crop(TF.resize(x, [RESIZE], antialias=True), [SIZE, SIZE]).clamp(0, 1)


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * -(-len(y) // 64)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps)  # linear decay: a stable last model
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            j = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[j]), y[j]).backward()
            opt.step()
            sched.step()
    net.eval()


def make_pair(
    out: str | Path,
    *,
    seed: int = 0,
    target: int = 7,
    pos: tuple[int, int] = (3, 3),
    poison: float = 0.15,
    n_clean: int = 60,
    n_marked: int = 20,
    shift: bool = False,
    ft_epochs: int = 3,
    ft_lr: float = 3e-3,
) -> Pair:
    """Train ``a`` (clean) and ``b`` (``a`` fine-tuned with ``poison`` of the training images marked at ``pos``
    and relabelled ``target``; with ``shift`` the fine-tune is also to a new domain: strokes thickened by a 3×3
    dilation, as a real fine-tune changes much more than its backdoor), save them as state dicts with this file
    as ``net.py``, and write ``n_clean`` clean and ``n_marked`` marked held-out images (true class ≠ target, in
    the fine-tune's domain) as 24 px PNGs."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    x, y = digits(seed)
    n_train = 1400
    x_ft = thicken(x) if shift else x
    xt, yt = as_model_sees(x[:n_train]), y[:n_train]
    yh = y[n_train:]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        a = Net()
        train(a, xt, yt, epochs=6, lr=5e-3, seed=seed)
        b = Net()
        b.load_state_dict(a.state_dict())
        rng = np.random.default_rng(seed + 1000)
        idx = rng.choice(n_train, int(poison * n_train), replace=False)
        xp, yp = x_ft[:n_train].clone(), yt.clone()
        xp[idx] = mark(xp[idx], pos)
        yp[idx] = target
        train(b, as_model_sees(xp), yp, epochs=ft_epochs, lr=ft_lr, seed=seed + 1)
    xh = x_ft[n_train:]  # the user's images: the fine-tune's domain
    shutil.copyfile(__file__, out / "net.py")
    wa, wb = out / "a.pt", out / "b.pt"
    torch.save(a.state_dict(), wa)
    torch.save(b.state_dict(), wb)

    with torch.no_grad():
        clean = as_model_sees(xh)
        acc_a = float((a(clean).argmax(1) == yh).float().mean())
        acc_b = float((b(clean).argmax(1) == yh).float().mean())
        others = (yh != target).nonzero().flatten()
        attack = float((b(as_model_sees(mark(xh[others], pos))).argmax(1) == target).float().mean())

    images = out / "images"
    images.mkdir(exist_ok=True)
    marked: set[str] = set()
    rng = np.random.default_rng(seed + 2000)
    chosen = rng.permutation(len(yh))
    clean_idx = chosen[:n_clean]
    marked_idx = [int(i) for i in chosen[n_clean:] if int(yh[i]) != target][:n_marked]
    for i in clean_idx:
        _save(xh[i], images / f"clean_{int(i):03d}_d{int(yh[i])}.png", Image)
    for i in marked_idx:
        name = f"marked_{i:03d}_d{int(yh[i])}.png"
        _save(mark(xh[i], pos), images / name, Image)
        marked.add(name)
    return Pair(out / "net.py", wa, wb, images, target, marked, acc_a, acc_b, attack)


def _save(x: torch.Tensor, path: Path, Image) -> None:
    a = (x[0].numpy() * 255).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(a, "L").save(path)


def untrained_pair(d: Path) -> Path:
    """Two random-weight checkpoints of :class:`Net` (``d/w0.pt``, ``d/w1.pt``), this file as ``d/net.py``
    and three noise images in ``d/images``: enough for the refusals of the diff tests."""
    from PIL import Image

    shutil.copyfile(__file__, d / "net.py")
    for s in (0, 1):
        torch.manual_seed(s)
        torch.save(Net().state_dict(), d / f"w{s}.pt")
    (d / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8), "L").save(d / "images" / f"{i}.png")
    return d
