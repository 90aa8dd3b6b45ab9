"""A layer's dictionary as data: the learnt basis of any kind (an SAE, NMF, the raw channels) with how it encodes
and reconstructs vectors, and reading it back from a ``filterscope dictionary`` run's ``dictionary.npz`` — what
the dictionary job writes and what ``concepts --basis dictionary`` and other jobs read, without the job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError

NPZ_FILE = "dictionary.npz"


@dataclass
class Basis:
    """A learnt dictionary, whatever its kind: its decoder rows and how to encode vectors with it."""

    kind: str
    decoder: np.ndarray  # [F, C]
    encode: Callable[[np.ndarray], np.ndarray]  # [n, C] → codes [n, F] (≥ 0 where active)
    reconstruct: Callable[[np.ndarray], np.ndarray]
    arrays: dict
    info: dict = field(default_factory=dict)

    @property
    def features(self) -> int:
        return self.decoder.shape[0]


def sae_basis(sae, info: dict) -> Basis:
    from . import sae as sae_mod

    return Basis(
        "sae",
        sae.w_dec.detach().numpy().copy(),
        lambda v: sae_mod.encode(sae, v),
        lambda v: sae_mod.reconstruct(sae, v),
        sae.arrays(),
        info,
    )


def nmf_basis(d, info: dict) -> Basis:
    return Basis(
        "nmf",
        d.bank,
        d.encode,
        lambda v: d.encode(v) @ d.bank,
        {"decoder": d.bank.astype(np.float32), "method": np.array(d.method)},
        info,
    )


def channels_basis(channels: int) -> Basis:
    eye = np.eye(channels, dtype=np.float32)
    return Basis("channels", eye, lambda v: np.asarray(v, np.float32), lambda v: np.asarray(v, np.float32), {}, {})


def load_basis(npz: Path, kind: str, channels: int) -> Basis | None:
    """The basis a resumed run saved (``dictionary.npz``), or None when absent or unreadable."""
    try:
        a = dict(np.load(npz, allow_pickle=False))
    except (OSError, ValueError):
        return None
    if kind == "sae":
        from .sae import SAE

        return sae_basis(SAE.from_arrays(a), {"resumed": True})
    if kind == "nmf":
        from . import dictionary as dic

        method = str(a["method"])
        if method == "nmf":
            return None  # scikit-learn's model is not in the npz: refit
        d = dic.Dictionary(method, a["decoder"], 0, 0.0, 0.0)
        return nmf_basis(d, {"method": method, "resumed": True})
    return channels_basis(channels)


def read_dictionary(run: str | Path) -> tuple[Basis, str, np.ndarray | None]:
    """The dictionary a ``filterscope dictionary`` run wrote (``RUN/dictionary.npz``): its basis (to encode
    new vectors), its layer, and the decoder of its second fit (another seed) when saved, else None. Raises
    :class:`UsageError` when the folder holds no readable dictionary (``nmf`` fitted by scikit-learn keeps no
    encoder in the npz: it cannot be reused)."""
    npz = Path(run) / NPZ_FILE
    if not npz.is_file():
        raise UsageError(f"no {NPZ_FILE} in {run}", hint="give the folder of a `filterscope dictionary` run")
    try:
        a = dict(np.load(npz, allow_pickle=False))
        kind, layer = str(a["basis"]), str(a["layer"])
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"{npz} is not a dictionary: {e}") from None
    basis = load_basis(npz, kind, int(a["decoder"].shape[1]) if "decoder" in a else 0)
    if basis is None:
        raise UsageError(f"the {kind} dictionary in {run} keeps no encoder", hint="use a --basis sae run")
    return basis, layer, a.get("twin_decoder")
