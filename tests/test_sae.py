"""The SAE trainer (jobs/sae.py) on small random data: memory stays flat over training steps."""

import gc

import numpy as np
import torch

from filterscope.jobs.sae import SAEConfig, fit_sae


def _tensors() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor or type(o) is torch.nn.Parameter)


def test_training_keeps_no_tensor_per_step():
    """Every step's tensors are freed: the count of live tensors is the same after each epoch (a graph once
    recorded through the decoder's gradient kept two decoder-sized tensors per step: 8 GB on 48 photos)."""
    x = np.random.default_rng(0).random((512, 32), dtype=np.float32)
    counts: list[int] = []
    fit_sae(x, SAEConfig(features=64, k=4, epochs=4, batch=64, seed=0), progress=lambda e: counts.append(_tensors()))
    assert len(counts) == 4 and counts[1] == counts[2] == counts[3], counts
