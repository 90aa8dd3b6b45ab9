"""Forward hooks that collect layer activations, and the early exit that stops the network there.

:class:`capture` is a context manager: it always removes its hooks, also when the forward pass raises.
With ``stop=True`` it raises :class:`StopForward` from the hook once every requested layer has produced
its final output, so the rest of the network never runs; :func:`run` catches it. The activations are the
very tensors the full model computes, because the same modules run on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType

import torch
from torch import nn

from ..errors import LayerError


class StopForward(Exception):
    """Raised inside the forward pass once the last needed activation exists."""


class capture:
    """Collect the outputs of named ``layers`` (and the inputs of ``inputs_of``) during forward passes.

    ``calls`` maps a layer to how many times the module runs per forward pass (a module can be used more
    than once, e.g. torchvision's shared ReLU in a residual block); the output of its last call is kept.
    """

    def __init__(
        self,
        net: nn.Module,
        layers: Iterable[str],
        *,
        calls: dict[str, int] | None = None,
        stop: bool = False,
        inputs_of: Iterable[str] = (),
        views: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    ):
        self.net = net
        self.layers = list(dict.fromkeys(layers))
        self.inputs_of = list(dict.fromkeys(inputs_of))
        self.calls = calls or {}
        self.stop = stop
        self.views = views or {}  # layer → raw output to maps (ViT tokens → B×C×H×W), see layers.map_views
        self.acts: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self._seen: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> capture:
        modules = dict(self.net.named_modules())
        try:
            for name in self.layers:
                self._handles.append(modules[name].register_forward_hook(self._hook(name)))
            for name in self.inputs_of:
                self._handles.append(modules[name].register_forward_pre_hook(self._pre_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def reset(self) -> None:
        self.acts.clear()
        self.inputs.clear()
        self._seen.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            n = self._seen.get(name, 0) + 1
            self._seen[name] = n
            stopping = self.stop and n >= self.calls.get(name, 1) and self._all_done(name)
            # a later in-place op (e.g. torchvision's ReLU(inplace=True)) would overwrite a kept tensor
            view = self.views.get(name)
            if view is not None:
                self.acts[name] = view(output).contiguous()  # a new tensor: later in-place ops cannot touch it
            else:
                self.acts[name] = output if stopping else output.clone()
            if stopping:
                raise StopForward

        return hook

    def _pre_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            if inputs and isinstance(inputs[0], torch.Tensor):
                self.inputs[name] = inputs[0].clone()  # before the module runs: in-place ops cannot touch it

        return hook

    def _all_done(self, current: str) -> bool:
        return all(self._seen.get(k, 0) >= self.calls.get(k, 1) for k in self.layers if k != current)


def run(forward, x: torch.Tensor, cap: capture) -> torch.Tensor | None:
    """Run ``forward(x)`` inside an open ``cap``; returns the logits, or None when it stopped early."""
    cap.reset()
    try:
        out = forward(x)
    except StopForward:
        return None
    missing = [k for k in cap.layers if k not in cap.acts]
    if missing:
        raise LayerError(f"layer {missing[0]} is not reached in the forward pass")
    return out
