"""Memory estimates, so impossible sizes are refused before any work starts."""

from __future__ import annotations

import os

# float32 buffers per rendered pixel and channel: the image, its parameter tensor, gradient, two Adam
# moments, FFT work space and the transformed copies (measured ~10 on CPU; 16 leaves headroom)
BUFFERS_PER_VALUE = 16


def render_bytes(size: int, batch: int = 1) -> int:
    return int(size) * int(size) * 3 * 4 * BUFFERS_PER_VALUE * max(1, int(batch))


def available_bytes(device: str = "cpu") -> int:
    device = str(device)
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def check_render_memory(size: int | None, batch: int | None, device: str = "cpu") -> None:
    """Refuse a render size whose image buffers would not fit in the memory available, before any work."""
    if size is None:
        return
    from ..errors import UsageError
    from ..models.registry import resolve_device

    need = render_bytes(size, batch or 1)
    have = available_bytes(resolve_device(device).type)
    if need > have:
        raise UsageError(
            f"--size {size} needs about {need / 2**30:.1f} GiB for the image buffers, "
            f"only {have / 2**30:.1f} GiB is available; use a smaller --size or --batch"
        )
