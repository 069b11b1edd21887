"""What the clean step works on, and its decoding in DataLoader workers.

A ``WorkItem`` names an image to clean (and, for a real pair, its clean copy); ``iter_decoded``
turns work items into ``Decoded`` images in worker processes, through ``pipeline.images``' guarded
open. A decoding failure travels with its item instead of stopping the loader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from torch.utils.data import DataLoader, Dataset

from pipeline.config import Settings
from pipeline.images import open_image
from storage import BlobStore


@dataclass(frozen=True)
class WorkItem:
    image_id: int
    sha256: str
    blob_key: str
    clean_key: str | None = None  # real pair: the clean copy's blob (the asset)
    clean_sha: str | None = None
    score_before: float | None = None  # the triage score, when it came from the promoted detector


@dataclass
class Decoded:
    item: WorkItem
    rgb: np.ndarray | None = None  # HxWx3 uint8
    alpha: np.ndarray | None = None  # HxW uint8, when the source had transparency
    clean: np.ndarray | None = None  # real pairs: the clean copy resized to rgb's size
    error: BaseException | None = None


def decode_rgba(data: bytes, max_pixels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Untrusted bytes → (RGB uint8 HxWx3, alpha HxW or None), through ``pipeline.images``."""
    im = open_image(data, max_pixels)
    arr = np.asarray(im)
    if im.mode == "RGBA":
        return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3])
    return arr, None


class BlobImages(Dataset):
    """Decodes work items from the blob store; a failure is returned, not raised, so one bad image
    never stops the loader. The blob store is opened lazily in each worker process."""

    def __init__(self, items: Sequence[WorkItem], blob_root: str, storage_options: dict, max_pixels: int,
                 with_clean: bool = True, retry_s: float = 60.0):
        self.items = list(items)
        self.blob_root, self.storage_options, self.max_pixels = blob_root, storage_options, max_pixels
        self.with_clean, self.retry_s = with_clean, retry_s
        self._blobs: BlobStore | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Decoded:
        item = self.items[i]
        if self._blobs is None:
            self._blobs = BlobStore(self.blob_root, self.storage_options, self.retry_s)
        try:
            rgb, alpha = decode_rgba(self._blobs.get(item.blob_key), self.max_pixels)
            clean = None
            if item.clean_key and self.with_clean:
                c, _ = decode_rgba(self._blobs.get(item.clean_key), self.max_pixels)
                if c.shape != rgb.shape:
                    c = np.asarray(PILImage.fromarray(c).resize((rgb.shape[1], rgb.shape[0]), PILImage.LANCZOS))
                clean = c
            return Decoded(item, rgb, alpha, clean)
        except Exception as exc:  # noqa: BLE001 - a decode error is this image's failure row; a
            return Decoded(item, error=exc)  # store fault (STORE_FAULTS) travels too and stops the step


def _one(x: Decoded) -> Decoded:  # DataLoader collate for batch_size=None (top level: picklable)
    return x


def iter_decoded(items: Sequence[WorkItem], settings: Settings, with_clean: bool = True) -> Iterator[Decoded]:
    """Decoded items in order, decoded by ``settings.clean.num_workers`` processes (0 = in-process)."""
    ds = BlobImages(items, settings.storage.blob_root, settings.storage.blob_storage_options(),
                    settings.images.max_image_pixels, with_clean, settings.storage.blob_retry_s)
    workers = max(0, min(settings.clean.num_workers, len(items)))
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_one,
                        prefetch_factor=2 if workers else None)
    yield from loader
