"""Small folders of the bundled photos for tests that need a few real images."""

import shutil
from pathlib import Path

from filterscope.models.inputs import sample_photos_dir


def bundled_photos(folder: Path, n: int, pattern: str = "*.jpg") -> Path:
    """The first ``n`` bundled photos matching ``pattern`` (``*_0.jpg``: one per scene), copied into ``folder``
    (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(sample_photos_dir().glob(pattern))[:n]:
        shutil.copy(f, folder / f.name)
    return folder
