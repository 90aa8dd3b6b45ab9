"""On a CUDA machine the same code renders on the GPU (skipped without one)."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_render_on_cuda_matches_cpu_quality():
    from filterscope.models import load_model
    from filterscope.optvis.objectives import channel
    from filterscope.optvis.render import Renderer, RenderSettings

    s = RenderSettings(steps=16, lr=0.05)
    cpu = Renderer(load_model(device="cpu"), s).render(channel("blocks.4", 3), [1])
    gpu_model = load_model(device="cuda")
    gpu = Renderer(gpu_model, s).render(channel("blocks.4", 3), [1])
    assert gpu.images.device.type == "cpu" and gpu.images.shape == cpu.images.shape
    assert gpu.after[0] > gpu.before[0] + 1.0
    assert abs(gpu.after[0] - cpu.after[0]) < 0.25 * abs(cpu.after[0])


def test_auto_batch_on_cuda_is_more_than_one():
    from filterscope.jobs.stream import auto_batch
    from filterscope.models import load_model
    from filterscope.models.layers import get_layer
    from filterscope.optvis.presets import get_preset

    m = load_model(device="cuda")
    assert auto_batch(m, get_preset("fast"), get_layer(m, "blocks.5")) > 1
