"""Image parameterisations: trainable tensors → a batch of images ``[B, C, H, W]`` in [0, 1].

Each image has its own trainable tensor, initialised from its own seed, so an image's optimisation does
not depend on which batch it is in. A new parameterisation is one class registered with
:func:`register_param`.

- ``pixel``: the tutorial's, the image itself; kept in [0, 1] by clamping after each step (with
  ``decorrelate`` it becomes Lucid's pixel image: a sigmoid of decorrelated colours).
- ``fourier``: Lucid's spectral image; the coefficients are scaled by 1/f so all frequencies learn at a
  similar rate, which removes the high-frequency noise of pixel ascent.
- ``laplacian``: a Laplacian pyramid of pixel levels (captum.optim's ``LaplacianImage``), summed upsampled.
- ``maco``: Fel et al. 2023. The magnitude of the spectrum is fixed to the mean spectrum of natural images
  and only the phase is optimised, so the image keeps natural-image statistics.

Decorrelated colour multiplies by the square root of the colour covariance of natural photos, so each
trainable channel moves along a principal colour direction. The colour matrix and the MACO magnitude
spectrum are computed from the bundled public-domain photos by ``scripts/make_sample_data.py`` and
shipped in ``data/natural_stats.npz``; nothing is downloaded.

Any number of channels ``C`` (1 for grayscale, 4 or more for extra bands): the shipped colour matrix is for
3 channels; one channel needs no decorrelation (a scalar); other counts take a ``C×C`` matrix estimated from
the user's images (:func:`estimate_color_sqrt`, as captum.optim estimates it from a dataset) or none. MACO's
magnitude for ``C ≠ 3`` is the mean of the shipped RGB spectra, for every channel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PARAM_REGISTRY: dict[str, type[ImageParam]] = {}


def register_param(name: str) -> Callable[[type[ImageParam]], type[ImageParam]]:
    """Register an :class:`ImageParam` subclass under ``name`` (``--param name``)."""

    def deco(cls: type[ImageParam]) -> type[ImageParam]:
        PARAM_REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


@functools.lru_cache(maxsize=1)
def natural_stats() -> dict[str, np.ndarray]:
    with resources.files("filterscope").joinpath("data/natural_stats.npz").open("rb") as f:
        z = np.load(f)
        return {
            "color_sqrt": z["color_sqrt"].astype(np.float64),
            "magnitude": np.exp(z["log_magnitude"].astype(np.float64)),
        }


def estimate_color_sqrt(images: torch.Tensor) -> torch.Tensor:
    """Square root of the channel covariance of ``images`` ``[N, C, H, W]`` (every pixel a sample), by
    ``eigh``; normalised by its largest column norm as :func:`color_matrix` is."""
    x = images.double().transpose(0, 1).reshape(images.shape[1], -1)
    cov = torch.cov(x)
    vals, vecs = torch.linalg.eigh(cov)
    root = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    norm = root.norm(dim=0).max()
    if not torch.isfinite(norm) or norm <= 0:
        return torch.eye(images.shape[1])
    return (root / norm).float()


# Gain of the map from decorrelated colour to RGB before the sigmoid. Lucid normalises the colour matrix to a
# unit luminance column; with the sigmoid's slope of 1/4 at 0, a unit-variance decorrelated signal (what MACO's
# standardised natural spectrum is) then becomes an image with only 1/(4 · 0.462) = 0.54 of the colour contrast
# of natural photos (0.462: the luminance std of ImageNet pixels, the column norm of Lucid's unnormalised
# matrix), and a Fourier image needs ~2× the optimiser steps to reach a given contrast (issue 18: fast and maco
# renders had colourfulness ~29 and RMS contrast ~0.12 against the photos' 56 and 0.18). With this gain,
# sigmoid(gain · matrix @ x) ≈ 0.5 + (natural colour covariance)^½ @ x near grey.
RGB_GAIN = 4 * 0.462


def color_matrix(gain: float = 1.0) -> torch.Tensor:
    """Colour correlation square root, normalised by its largest column norm (Lucid's convention), × ``gain``."""
    m = natural_stats()["color_sqrt"]
    return torch.tensor(m / np.linalg.norm(m, axis=0).max() * gain, dtype=torch.float32)


def recorrelate(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Map decorrelated colour channels ``[B,3,H,W]`` to RGB directions."""
    return torch.einsum("ij,bjhw->bihw", color_matrix(gain).to(x.device), x)


def rfft_freqs(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def natural_magnitude(h: int, w: int, channels: int = 3) -> torch.Tensor:
    """The shipped mean magnitude spectrum resampled to an ``h×w`` image's rfft grid ``[3, h, w//2+1]``
    (``[channels, …]``: for a count other than 3, the mean of the RGB spectra for each channel)."""
    mag = torch.tensor(natural_stats()["magnitude"], dtype=torch.float32)
    if channels != 3:
        mag = mag.mean(0, keepdim=True).expand(channels, *mag.shape[1:])
    n = mag.shape[1]
    centred = torch.fft.fftshift(mag, dim=1).unsqueeze(0)  # rows ordered from -f to +f
    out = F.interpolate(centred, size=(h, w // 2 + 1), mode="bilinear", align_corners=False, antialias=h < n)[0]
    return torch.fft.ifftshift(out, dim=1)


def standardize(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.dim()))
    return (x - x.mean(dims, keepdim=True)) / (x.std(dims, keepdim=True) + 1e-4)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)


class ColourMap(nn.Module):
    """A colour mapping: the spatial parameterisation's signal ``[B, C, H, W]`` → images in [0, 1]. A param is
    a spatial parameterisation × a colour mapping (as Lucid's ``param.image(fft=..., decorrelate=...)``); a new
    colour mapping is one subclass, given to any param as ``colour=``."""

    name = "base"
    decorrelated = False  # whether it maps decorrelated colour directions to the input's channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The signal mapped to the input's channels before the squashing (the identity by default)."""
        return x

    def inverse(self, image: torch.Tensor) -> torch.Tensor:
        """The signal whose image is ``image`` (for a param that starts at a photo)."""
        raise NotImplementedError(f"the {self.name} colour mapping has no inverse")

    def start(self, gen: torch.Generator, shape: tuple[int, ...], noise: tuple[float, float]) -> torch.Tensor:
        """A pixel signal's random start (near grey)."""
        return torch.randn(*shape, generator=gen) * 0.01

    @torch.no_grad()
    def project(self, tensors: Sequence[torch.Tensor]) -> None:
        """Called on the trainable tensors after each optimiser step."""

    def describe(self) -> dict:
        return {"colour": self.name}


class SigmoidColour(ColourMap):
    """``sigmoid(matrix @ x)``: with a ``C×C`` matrix, decorrelated colour (each signal channel moves along a
    principal colour direction of photos); without, a plain sigmoid per channel."""

    name = "sigmoid"

    def __init__(self, matrix: torch.Tensor | None = None, decorrelated: bool | None = None):
        super().__init__()
        self.register_buffer("matrix", matrix)
        self.decorrelated = matrix is not None if decorrelated is None else decorrelated

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.matrix is None:
            return x
        return torch.einsum("ij,bjhw->bihw", self.matrix, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))

    def inverse(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.logit(image.clamp(1 / 255, 254 / 255))
        if self.matrix is None:
            return x
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.matrix.cpu()), x)


class ClampColour(ColourMap):
    """The signal is the image, kept in [0, 1] by clamping after each step (the tutorial's pixel image); its
    random start is uniform ``noise``."""

    name = "clamp"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def start(self, gen: torch.Generator, shape: tuple[int, ...], noise: tuple[float, float]) -> torch.Tensor:
        lo, hi = noise
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    @torch.no_grad()
    def project(self, tensors: Sequence[torch.Tensor]) -> None:
        for t in tensors:
            t.clamp_(0.0, 1.0)


def colour_map(
    decorrelate: bool, channels: int = 3, color: torch.Tensor | None = None, rgb_gain: float = RGB_GAIN
) -> SigmoidColour:
    """The sigmoid colour mapping the ``decorrelate`` flag asks for: a ``C×C`` ``color`` matrix (estimated
    from images) or the shipped natural-RGB matrix for 3 channels, × ``rgb_gain``; none for other counts."""
    if color is not None and decorrelate:
        return SigmoidColour(color.float() * float(rgb_gain))
    if decorrelate and channels == 3:
        return SigmoidColour(color_matrix(float(rgb_gain)))
    return SigmoidColour(None, decorrelated=decorrelate)


class ImageParam(nn.Module):
    """Base class: a spatial parameterisation (one trainable tensor per image in ``self.tensors``, mapped to
    a signal by :meth:`signal`) × a colour mapping (``self.colour``, a :class:`ColourMap`).

    ``colour`` is any colour mapping; without one it is the one the flags ask for (:func:`colour_map`; a
    class's :attr:`plain` colour without ``decorrelate``): ``channels`` is the image's channel count; ``color``
    a ``C×C`` decorrelation matrix (default: the shipped natural-RGB matrix for 3 channels, none for other
    counts); ``rgb_gain`` scales a colour matrix before the sigmoid (:data:`RGB_GAIN`; 1 is Lucid's mapping)."""

    name = "base"
    plain: type[ColourMap] | None = None  # the colour mapping without decorrelate (None: a plain sigmoid)

    def __init__(
        self,
        seeds: Sequence[int],
        size: int,
        decorrelate: bool = True,
        channels: int = 3,
        color: torch.Tensor | None = None,
        rgb_gain: float = RGB_GAIN,
        colour: ColourMap | None = None,
    ):
        super().__init__()
        self.rgb_gain = float(rgb_gain)
        self.seeds = [int(s) for s in seeds]
        self.size = int(size)
        self.channels = int(channels)
        if color is not None and tuple(color.shape) != (self.channels, self.channels):
            raise ValueError(f"color matrix must be {self.channels}×{self.channels}, got {tuple(color.shape)}")
        if colour is None:
            plain = not decorrelate and self.plain is not None
            colour = self.plain() if plain else colour_map(decorrelate, self.channels, color, self.rgb_gain)
        self.colour = colour
        self.decorrelate = colour.decorrelated
        self.tensors = nn.ParameterList([nn.Parameter(self.init(generator(s))) for s in self.seeds])

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Refuse bad values of this param's options (``RenderSettings.param_options``) before any work."""

    def init(self, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def signal(self, t: torch.Tensor) -> torch.Tensor:
        """The spatial parameterisation: the stacked trainable tensors → the signal before the colour mapping."""
        raise NotImplementedError

    def images(self, t: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from the stacked trainable tensors: the colour mapping of the signal."""
        return self.colour(self.signal(t))

    def forward(self) -> torch.Tensor:
        ts = list(self.tensors)
        return self.images(ts[0] if len(ts) == 1 else torch.cat(ts))

    def recolour(self, x: torch.Tensor) -> torch.Tensor:
        """The signal mapped to the input's colour channels, before the squashing."""
        return self.colour.linear(x)

    def to_valid_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1]: the colour mapping of the signal ``x``."""
        return self.colour(x)

    @torch.no_grad()
    def project(self) -> None:
        """Called after each optimiser step (e.g. to clamp pixels)."""
        self.colour.project(list(self.tensors))

    def describe(self) -> dict:
        return {
            "param": self.name,
            "decorrelate": self.decorrelate,
            "size": self.size,
            "channels": self.channels,
            "rgb_gain": self.rgb_gain,
            **self.colour.describe(),
        }


@register_param("pixel")
class PixelParam(ImageParam):
    """The image itself. Without ``decorrelate`` (the tutorial, :class:`ClampColour`): uniform noise, clamped
    to [0, 1]."""

    plain = ClampColour

    def __init__(
        self,
        seeds: Sequence[int],
        size: int,
        decorrelate: bool = False,
        noise: tuple[float, float] = (0.0, 1.0),
        **kwargs,
    ):
        self.noise = noise
        super().__init__(seeds, size, decorrelate, **kwargs)

    def init(self, gen: torch.Generator) -> torch.Tensor:
        return self.colour.start(gen, (1, self.channels, self.size, self.size), self.noise)

    def signal(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def describe(self) -> dict:
        return {**super().describe(), "noise": list(self.noise)}


SPECTRA = ("1/f", "natural")


def spectrum_scale(size: int, spectrum: str = "1/f", decay_power: float = 1.0) -> torch.Tensor:
    """The per-frequency scale of the ``fourier`` coefficients ``[1, 1, size, size//2+1, 1]``: Lucid's
    ``1/f^decay_power``, or ``natural``: the shipped mean magnitude spectrum of photos (MACO's prior, its
    colour channels averaged) at the same overall size (L2 norm), so one learning rate means the same."""
    from ..errors import UsageError

    if spectrum not in SPECTRA:
        raise UsageError(f"unknown spectrum {spectrum!r}", hint="use " + " or ".join(SPECTRA))
    f = rfft_freqs(size, size)
    scale = torch.tensor(1.0 / np.maximum(f, 1.0 / size) ** decay_power, dtype=torch.float32)
    if spectrum == "natural":
        if decay_power != 1.0:
            raise UsageError("decay_power applies to the 1/f spectrum only, not to spectrum='natural'")
        mag = natural_magnitude(size, size).mean(0)
        scale = mag * (scale.norm() / mag.norm())
    return scale[None, None, :, :, None]


@register_param("fourier")
class FourierParam(ImageParam):
    """Lucid's ``fft_image``: rfft coefficients scaled per frequency (``spectrum``: Lucid's 1/f, or the photos'
    own mean spectrum), orthonormal inverse, divided by 4. The scale preconditions the optimiser: a step moves
    each frequency in proportion to it."""

    def __init__(
        self,
        seeds: Sequence[int],
        size: int,
        decorrelate: bool = True,
        decay_power: float = 1.0,
        sd: float = 0.01,
        init_contrast: float = 0.0,
        spectrum: str = "1/f",
        **kwargs,
    ):
        self.sd = sd
        self.decay_power = decay_power
        self.init_contrast = float(init_contrast)
        self.spectrum = spectrum
        self._scale = spectrum_scale(size, spectrum, decay_power)
        super().__init__(seeds, size, decorrelate, **kwargs)
        self.register_buffer("scale", self._scale)
        # Lucid divides the synthesised image by 4; the division is folded into the (linear) scaling
        self.register_buffer("scale_synth", self.scale / 4.0)

    def init(self, gen: torch.Generator) -> torch.Tensor:
        shape = (1, self.channels, self.size, self.size // 2 + 1, 2)
        if self.init_contrast <= 0:
            return torch.randn(*shape, generator=gen) * self.sd
        # a random-phase image with the natural spectrum at a set contrast (MACO's prior as a starting point;
        # the amplitudes stay free): the loop need not first grow the image from grey
        mag = natural_magnitude(self.size, self.size, self.channels)[None, :, :, :, None]
        t = torch.randn(*shape, generator=gen) * mag / (self._scale / 4.0)
        return t * (self.init_contrast / (self.spatial(t, self._scale / 4.0).std() + 1e-8))

    def spatial(self, t: torch.Tensor, scale_synth: torch.Tensor) -> torch.Tensor:
        """The image before the colour mapping: the orthonormal inverse rfft of the scaled coefficients."""
        spec = torch.view_as_complex((t * scale_synth).contiguous())
        return torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho")

    def signal(self, t: torch.Tensor) -> torch.Tensor:
        return self.spatial(t, self.scale_synth)

    @classmethod
    def check_options(cls, options: dict) -> None:
        from ..errors import UsageError

        spectrum = options.get("spectrum", SPECTRA[0])
        if spectrum not in SPECTRA:
            raise UsageError(f"unknown spectrum {spectrum!r}", hint="use " + " or ".join(SPECTRA))

    def describe(self) -> dict:
        d = {**super().describe(), "decay_power": self.decay_power}
        if self.spectrum != "1/f":
            d["spectrum"] = self.spectrum
        return {**d, "init_contrast": self.init_contrast} if self.init_contrast > 0 else d


@register_param("laplacian")
class LaplacianParam(ImageParam):
    """A Laplacian pyramid (as captum.optim's ``LaplacianImage``): the image before the colour mapping is the
    sum of levels at the full side, 1/2, 1/4, … down to the last side of at least 4 px (7 px at 224), each
    upsampled bilinearly and weighted ``level_gain**k``. Under (N)Adam every level's values move ~lr per step,
    so coarse structure forms as fast as fine detail, through local (not global, as in ``fourier``) basis
    functions. ``init_contrast`` > 0 starts the finest level at ``fourier``'s natural start (same
    statistics), the coarser ones at 0."""

    def __init__(
        self,
        seeds: Sequence[int],
        size: int,
        decorrelate: bool = True,
        level_gain: float = 1.0,
        init_contrast: float = 0.0,
        sd: float = 0.01,
        **kwargs,
    ):
        self.level_gain = float(level_gain)
        self.init_contrast = float(init_contrast)
        self.sd = sd
        self.sides = [size >> k for k in range(int(size).bit_length()) if size >> k >= 4] or [int(size)]
        super().__init__(seeds, size, decorrelate, **kwargs)

    def init(self, gen: torch.Generator) -> torch.Tensor:
        c, n = self.channels, self.size * self.size * self.channels
        t = torch.zeros(1, sum(c * s * s for s in self.sides))
        if self.init_contrast > 0:
            start = FourierParam(
                [int(torch.randint(2**31, (), generator=gen))], self.size, channels=c, init_contrast=self.init_contrast
            )
            t[0, :n] = start.spatial(start.tensors[0].detach(), start.scale_synth).flatten()
        else:
            t[0, :n] = torch.randn(n, generator=gen) * self.sd
        return t

    def spatial(self, t: torch.Tensor) -> torch.Tensor:
        """The image before the colour mapping: the weighted sum of the upsampled levels."""
        b, c, out, offset = t.shape[0], self.channels, 0.0, 0
        for k, side in enumerate(self.sides):
            level = t[:, offset : offset + c * side * side].reshape(b, c, side, side)
            offset += c * side * side
            if side != self.size:
                level = F.interpolate(level, size=(self.size, self.size), mode="bilinear", align_corners=False)
            out = out + self.level_gain**k * level
        return out

    def signal(self, t: torch.Tensor) -> torch.Tensor:
        return self.spatial(t)

    def describe(self) -> dict:
        d = {**super().describe(), "levels": len(self.sides), "level_gain": self.level_gain}
        return {**d, "init_contrast": self.init_contrast} if self.init_contrast > 0 else d


@register_param("maco")
class MacoParam(ImageParam):
    """MACO: fixed natural magnitude spectrum, trainable phase; standardised, recorrelated, sigmoid."""

    def __init__(self, seeds: Sequence[int], size: int, decorrelate: bool = True, contrast: float = 1.0, **kwargs):
        self.contrast = contrast
        super().__init__(seeds, size, decorrelate, **kwargs)
        self.register_buffer("magnitude", natural_magnitude(size, size, self.channels))

    def init(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(1, self.channels, self.size, self.size // 2 + 1, generator=gen)

    def spatial(self, phase: torch.Tensor) -> torch.Tensor:
        """The image before colour mapping: inverse FFT of magnitude·e^{iφ}."""
        phase = standardize(phase)
        spec = torch.polar(self.magnitude.expand_as(phase), phase)
        return torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho")

    def signal(self, t: torch.Tensor) -> torch.Tensor:
        return standardize(self.spatial(t)) * self.contrast

    def describe(self) -> dict:
        return {**super().describe(), "contrast": self.contrast}


@register_param("image")
class ImageSeededParam(FourierParam):
    """Feature accentuation's parameterisation: Lucid's Fourier image (decorrelated colour) that starts
    *exactly* at a photo (Hamblin et al. 2024 seed the optimisation with the image in the same space).

    ``image`` ``[3, size, size]`` in [0, 1] is mapped back through the sigmoid and the colour
    decorrelation into 1/f-scaled Fourier coefficients; every seed starts from it (the seed only drives
    the random transforms). Without an image it is the ``fourier`` parameterisation.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        size: int,
        decorrelate: bool = True,
        image: torch.Tensor | None = None,
        decay_power: float = 1.0,
        rgb_gain: float = 1.0,  # the gain its default strength was measured with (README, "Explain an image")
        **kwargs,
    ):
        self.start = None if image is None else image.detach().float().cpu()
        super().__init__(seeds, size, decorrelate, decay_power=decay_power, rgb_gain=rgb_gain, **kwargs)
        if self.start is not None:
            with torch.no_grad():
                coeffs = self.coefficients(self.start)
                for t in self.tensors:
                    t.copy_(coeffs)

    def coefficients(self, image: torch.Tensor) -> torch.Tensor:
        """The trainable tensor whose image is ``image`` (clipped to [1/255, 254/255] to stay finite): the
        inverse of :meth:`to_valid_rgb` and the Fourier synthesis."""
        if image.shape[-1] != self.size or image.shape[-2] != self.size:
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", antialias=True)[0]
        x = self.colour.inverse(image[None])
        spec = torch.view_as_real(torch.fft.rfft2(x * 4.0, norm="ortho"))
        return spec / self.scale[0]

    def describe(self) -> dict:
        return {**super().describe(), "start": "photo" if self.start is not None else "noise"}


def param_registry() -> dict[str, type[ImageParam]]:
    """Every registered parameterisation, plugins (entry points ``filterscope.params``) included."""
    from .. import plugins

    plugins.load_group("filterscope.params", PARAM_REGISTRY, lambda name, cls: register_param(name)(cls))
    return PARAM_REGISTRY


def param_options(cls: type[ImageParam]) -> set[str]:
    """The keyword options a parameterisation class takes (its own and, through ``**kwargs``, its bases')."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is nn.Module:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names - {"self", "seeds", "size"}


def make_param(name: str, seeds: Sequence[int], size: int, **kwargs) -> ImageParam:
    from ..errors import UsageError, closest

    registry = param_registry()
    if name not in registry:
        raise UsageError(f"unknown parameterisation {name!r}", hint=closest(name, registry))
    return registry[name](seeds, size, **kwargs)
