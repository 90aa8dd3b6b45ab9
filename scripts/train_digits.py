"""Train the two bundled digits CNNs (``digits_cnn``, ``digits_cnn_b``) on scikit-learn's ``load_digits``.

1,797 real 8×8 handwritten digits, upsampled to 28×28 in [0, 1]; the last 297 (in a seeded shuffle) are held
out. Random shifts, scales and rotations keep the networks from keying on single pixels. The two networks
differ only in their seed (0 and 1). Writes ``src/filterscope/data/digits_cnn_{a,b}.pt`` (float16 state
dicts) and prints each network's held-out accuracy. About 30 s on 2 CPU cores:

    python scripts/train_digits.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torchvision.transforms.v2 import functional as TF

from filterscope.models.digits import INPUT_SIZE, DigitsCNN, digits_model

OUT = Path(__file__).resolve().parents[1] / "src" / "filterscope" / "data"


def digits_tensors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train y, test x, test y): ``[N, 1, 28, 28]`` in [0, 1]; one fixed split for both networks."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return x[:1500], y[:1500], x[1500:], y[1500:]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    out = []
    for img in x:
        r = torch.rand(4, generator=gen)
        out.append(
            TF.affine(
                img,
                angle=float(r[0] * 24 - 12),
                translate=[int(r[1] * 7) - 3, int(r[2] * 7) - 3],
                scale=float(0.85 + r[3] * 0.3),
                shear=[0.0, 0.0],
            )
        )
    return torch.stack(out)


def train(seed: int, epochs: int = 30) -> tuple[DigitsCNN, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr, xte, yte = digits_tensors()
    net = DigitsCNN()
    model = digits_model(net, f"seed{seed}")
    net.train()
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        perm = torch.randperm(len(ytr), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            xb = augment(xtr[idx], gen)
            xb = (xb + 0.05 * torch.randn(xb.shape, generator=gen)).clamp(0, 1)
            loss = F.cross_entropy(net(model.normalize(xb)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(model.normalize(xte)).argmax(1) == yte).float().mean())
    return net, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for variant, seed in (("a", 0), ("b", 1)):
        net, acc = train(seed, args.epochs)
        path = OUT / f"digits_cnn_{variant}.pt"
        torch.save({k: v.half() for k, v in net.state_dict().items()}, path)
        print(f"digits_cnn_{variant} (seed {seed}): held-out accuracy {acc:.3f} on 297 digits → {path}")
    print(f"numpy {np.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
