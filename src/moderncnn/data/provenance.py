"""Where a run's data came from, and whether the data at hand is the same: a few numbers per split.

A run records, for its train and its test split, the folder and files it read and a SHA-256 of the pixels,
labels and class names it trained and tested on. ``--resume`` and ``eval`` check the data they load against
that record, so a run is never continued or scored on other data (the embedded sample, a re-ordered copy, a
folder that has changed) without saying so.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from .base import DataError, ImageDataset

__all__ = ["provenance", "check_provenance", "content_sha256"]


def content_sha256(data: ImageDataset) -> str:
    """SHA-256 of a split's images, labels and class names (its files' layout and compression aside)."""
    h = hashlib.sha256()
    h.update(repr((tuple(data.images.shape), list(data.classes))).encode())
    h.update(data.images.contiguous().numpy().data)
    h.update(data.labels.contiguous().numpy().data)
    return h.hexdigest()


def provenance(data: ImageDataset) -> dict[str, Any]:
    """One split's record for run.json: where it came from, its size and its checksum."""
    files = []
    for f in data.files:
        try:
            files.append({"path": f, "bytes": os.path.getsize(f)})
        except OSError:
            files.append({"path": f, "bytes": None})
    return {"source": data.source, "root": data.root, "is_sample": bool(data.is_sample), "examples": len(data),
            "files": files, "sha256": content_sha256(data)}


def check_provenance(recorded: Any, data: ImageDataset, what: str) -> None:
    """A one-line DataError unless ``data`` is the split ``recorded`` describes (a run's ``data.train`` or
    ``data.test``). ``what`` names the action for the error: ``"resume"``, ``"evaluate"``."""
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        return  # a run written before provenance was recorded: nothing to check against
    if recorded.get("is_sample") and not data.is_sample:
        raise DataError(f"the run trained on the embedded sample, and {data.source} is the full set; to {what} "
                        f"it, leave out --data-dir, or start a new run on the full set")
    if content_sha256(data) != recorded["sha256"]:
        raise DataError(f"the {data.split} data found in {data.source} ({len(data):,} images) is not the data the "
                        f"run used ({recorded.get('examples')} images from {recorded.get('source')}); to "
                        f"{what} it, pass --data-dir with the run's data, or start a new run")
