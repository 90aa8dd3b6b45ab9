"""Every file name a run writes, built in one place (the conventions of ``shared/README.md``).

One PNG per channel ends with its index (``blocks.5/channel_0042.png``), class renders are
``logit_0967.png``, accentuations ``blocks.5/accent_0042.png``; diversity variants go in
``diversity_<v>/`` beside them; grids and figures carry ``grid`` / ``figure`` in their names.
"""

from __future__ import annotations

from ..defaults import DEFAULT_OUT, LOGIT

RUN_FILE = "run.json"
REPORT = "report.html"
OBJECTIVE_PNG = "objective.png"  # an objective that is not one channel or class


def channel_file(layer: str, c: int, variant: int = 0) -> str:
    """``<layer>/channel_0042.png``; class logits: ``logit_0967.png``; diversity variants in subfolders."""
    sub = f"diversity_{variant}/" if variant else ""
    if layer == LOGIT:
        return f"{sub}logit_{c:04d}.png"
    return f"{layer}/{sub}channel_{c:04d}.png"


def channel_page(c: int) -> str:
    """A channel's page of the atlas site, inside its layer's folder."""
    return f"channel_{c:04d}.html"


def accent_file(layer: str, c: int) -> str:
    """A filter's accentuation of a photo: ``<layer>/accent_0042.png``."""
    return f"{layer}/accent_{c:04d}.png"


def bands_file(layer: str, c: int) -> str:
    """Every band of a render of a model with more than 3 input channels: ``<layer>/bands_0042.png``
    (class logits: ``bands_logit_0967.png``)."""
    return f"bands_logit_{c:04d}.png" if layer == LOGIT else f"{layer}/bands_{c:04d}.png"


def accent_change_file(layer: str, c: int) -> str:
    """Where the accentuation changed the photo: ``<layer>/accent_0042_change.png``."""
    return f"{layer}/accent_{c:04d}_change.png"


def grid_file(layer: str) -> str:
    return f"grid_{layer}.png"


def figure_file(name: str) -> str:
    return f"figure_{name}.png"


def objective_file(target) -> str:
    """The PNG of a rendered objective: its channel's or class's file when it targets one (a
    :class:`~filterscope.optvis.objectives.Target` of kind channel/logit with one index), else
    ``objective.png``."""
    if target is not None and target.kind in ("channel", "logit") and isinstance(target.index, int):
        return channel_file(target.layer, target.index)
    return OBJECTIVE_PNG


def default_out(job: str) -> str:
    """A job's default output folder: ``filterscope-out/<job>``."""
    return f"{DEFAULT_OUT}/{job}"
