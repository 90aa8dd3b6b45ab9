"""Reading user images safely and turning them into a model's input (tensors in [0, 1]).

Any image Pillow reads is accepted: EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images
are converted to 8-bit RGB; transparent images (RGBA, LA, palette with transparency) are composited on
**white**, as a browser shows them; animated images use their first frame (with a warning). Files that
are missing, empty, not images, truncated or corrupt, smaller than 16×16, or so large that decoding them
could exhaust memory (more than 50 megapixels, e.g. a decompression-bomb header) are refused with an
:class:`~filterscope.errors.ImageError`.

A model with another channel count gets the image converted (:func:`image_tensor`, described by
:func:`channel_conversion`): 1 channel → luminance (Pillow's ``L``: 0.299 R + 0.587 G + 0.114 B); 4 or more
→ RGB in bands 1-3 and the luminance replicated in the extra bands. :meth:`Model.preprocess
<filterscope.models.model.Model.preprocess>` is :func:`model_input`. Writing images is
:mod:`filterscope.outputs.images`.
"""

from __future__ import annotations

import io
import os
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

MAX_PIXELS = 50_000_000
MIN_SIDE = 16
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def sample_image_path() -> Path:
    """The bundled photo of an espresso cup (scikit-image's ``coffee``, CC0)."""
    return Path(str(resources.files("filterscope") / "data" / "coffee.jpg"))


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image, or raise ImageError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image")
    if not os.access(path, os.R_OK):
        raise ImageError(f"image is not readable (permission denied): {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"image file is empty: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror or e}") from None
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str = "image") -> Image.Image:
    """Decode image bytes to RGB with the rules in the module docstring."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(
                    f"{name} is {w}×{h} pixels, more than the {MAX_PIXELS // 1_000_000} megapixels "
                    "filterscope accepts (a decompression bomb?); resize it first"
                )
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                warnings.warn(f"{name} is animated ({frames} frames): using the first frame", stacklevel=2)
                im.seek(0)
            im.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name} declares a size too large to decode safely (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(
            f"{name} is truncated or corrupt: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    w, h = im.size
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"{name} is {w}×{h} pixels; at least {MIN_SIDE}×{MIN_SIDE} is needed")
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:
        pass
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode; transparency is composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB → float tensor ``[3, H, W]`` in [0, 1]."""
    a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


def channel_conversion(channels: int) -> str:
    """How :func:`image_tensor` turns an RGB image into ``channels`` channels (for run records)."""
    if channels == 1:
        return "RGB → luminance (Pillow 'L': 0.299 R + 0.587 G + 0.114 B)"
    if channels == 3:
        return "RGB"
    if channels == 2:
        return "RGB → luminance in both channels"
    return f"RGB in channels 0-2, luminance replicated in channels 3-{channels - 1}"


def image_tensor(im: Image.Image, channels: int = 3) -> torch.Tensor:
    """An image as a float tensor ``[channels, H, W]`` in [0, 1], converted as :func:`channel_conversion` says."""
    if channels == 3:
        return to_tensor(im)
    lum = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.uint8).copy()).float().div_(255.0)[None]
    if channels < 3:
        return lum.expand(channels, -1, -1).clone()
    return torch.cat([to_tensor(im), lum.expand(channels - 3, -1, -1)])


def model_input(model, im: Image.Image) -> torch.Tensor:
    """The model's own geometric preprocessing: resize the shorter side, centre-crop; ``[1,C,S,S]`` in [0,1]
    with the model's channel count (:func:`image_tensor`)."""
    from torchvision.transforms.v2 import functional as TF

    x = image_tensor(im, getattr(model, "in_channels", 3))
    x = TF.resize(x, [model.resize_size], antialias=True)
    x = TF.center_crop(x, [model.input_size, model.input_size])
    return x.unsqueeze(0).clamp(0, 1)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted for a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def load_channel_images(folder: str | os.PathLike, channels: int, size: int, limit: int = 64) -> torch.Tensor:
    """Up to ``limit`` images of ``folder`` as ``[N, channels, size, size]`` (resized, centre-cropped), e.g.
    to estimate a colour matrix from."""
    from torchvision.transforms.v2 import functional as TF

    out = []
    for f in list_images(folder)[:limit]:
        x = image_tensor(load_image(f), channels)
        x = TF.center_crop(TF.resize(x, [size], antialias=True), [size, size])
        out.append(x)
    return torch.stack(out)


def sample_photos_dir() -> Path:
    """The bundled set of public-domain / CC0 photos used for dataset examples and ``evaluate``."""
    return Path(str(resources.files("filterscope") / "data" / "photos"))
