"""Training data: (watermarked, target, mask, clean) samples drawn from a list of image files.

Each sample, in order:

1. **Load** the photo (RGB, EXIF orientation applied; large JPEGs decoded at a reduced scale
   that still leaves at least twice the crop size), kept decoded in a per-process cache.
2. **Clean-crop augmentation — reaches input and target alike**, because it happens before the
   mark exists (Albumentations 2): geometric — ``RandomResizedCrop`` to ``size``, horizontal
   flip, small rotation; photometric — colour jitter, grayscale, gamma; scene effects — cast
   shadow, rain. These change what the photo looks like, so the target must show them too.
   Validation/test samples skip this stage: a seeded crop only (upscaled first when the photo is
   smaller than ``size``), so the split measures the model and not the augmentation draw.
3. **Watermark** (``model.synth.renderer.WatermarkRenderer``, its own post-processing off). With
   ``context`` c > 1 (training only), stage 2 crops c·``size`` pixels, the mark is drawn on that
   canvas, and a ``size`` window (usually one holding part of the mark) is cut from input, target,
   clean and mask alike: marks then come larger than the window, as large logos do on full-size
   photos. The pairing picks the target:
   - ``supervised``: target = the clean crop;
   - ``self-supervised`` (SWCNN, Tian et al. 2024): a second, independently drawn mark of the
     same family on the same crop is the target; the mask is the first view's.
4. **Artifacts — applied to input, target and clean with identical parameters** (one draw, the
   same noise field, the same JPEG quality, the same dropped pixels): Gaussian blur, JPEG
   re-compression, Gaussian noise (the same list the renderer uses for its post-processing) and
   pixel dropout. A web copy and its source share such degradations; applying them to both
   keeps the target aligned and teaches the network to leave everything but the mark alone.
   Blur spreads the mark by a pixel or two: those pixels, where the input now differs from the
   clean image by ``min_diff`` or more, join the mask.
5. **Input only**: with probability 0.1, one more JPEG re-compression (quality 80–95) of the
   watermarked input — the copy that carries a mark has usually been re-encoded once more than
   its source. The mask is *not* grown for it, so the mask head learns that compression noise is
   not a watermark.

Randomness: each item draws from a ``numpy`` generator seeded by (seed, index, draw count,
worker seed), and Albumentations transforms are seeded from that generator; so a DataLoader
worker never repeats another's stream, training samples differ every epoch, and with
``train=False`` item *i* is a function of (seed, i) only — the same every epoch and every run.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, get_worker_info

from model.synth.layers import channel_max, reencode_artifacts
from model.synth.renderer import WatermarkRenderer, mark_window

PAIRINGS = ("supervised", "self-supervised")


@contextmanager
def one_opencv_thread() -> Iterator[None]:
    """OpenCV on one thread inside the block, its thread count restored after. Start a
    DataLoader's workers in it: forked workers inherit the setting and draw their pairs on one
    thread each, where by default every worker would run OpenCV's pool of one thread per core (the
    renderer's resizes, warps and blurs use it: N workers, N×cores threads on the cores).

    Set in the parent, not in each worker: ``cv2.setNumThreads`` called in a forked child whose
    parent had started the pool hung in 3 of 10 tries here (it waits on threads the child does not
    have)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def load_rgb(path: str | os.PathLike, min_side: int | None = None) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB with its EXIF orientation applied; transparency is
    flattened onto white and 16-bit samples scaled to 8. With ``min_side``, JPEGs are decoded at
    the smallest DCT scale that keeps both sides >= ``min_side``."""
    with Image.open(path) as im:
        if min_side:
            im.draft("RGB", (min_side, min_side))
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.repeat((np.asarray(im, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)[..., None], 3, -1)
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            flat.alpha_composite(rgba)
            return np.asarray(flat.convert("RGB"))
        return np.asarray(im.convert("RGB"))


def split_paths(paths: Sequence[str | os.PathLike], fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)
                ) -> tuple[list[str], list[str], list[str]]:
    """Train/val/test lists, each file placed by the SHA-256 of its bytes (the same rule the
    catalog uses), so adding or removing files never moves another one between splits.

    With 3+ files no split is left empty: the file whose hash lies nearest an empty split's
    range is moved into it (only for such tiny sets does a file's split depend on the others).
    """
    keyed = []
    for i, p in enumerate(paths):
        digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        keyed.append((int(digest[:8], 16) / 0xFFFFFFFF, i, str(p)))
    bounds = (0.0, fractions[0], fractions[0] + fractions[1], 1.0 + 1e-9)
    splits: list[list[tuple[float, int, str]]] = [[], [], []]
    for item in keyed:
        u = item[0]
        splits[0 if u < bounds[1] else 1 if u < bounds[2] else 2].append(item)
    if len(keyed) >= 3:
        for i in range(3):
            if splits[i]:
                continue
            centre = (bounds[i] + bounds[i + 1]) / 2
            donors = [j for j in range(3) if len(splits[j]) > 1]
            j, k = min(((j, k) for j in donors for k in range(len(splits[j]))),
                       key=lambda jk: abs(splits[jk[0]][jk[1]][0] - centre))
            splits[i].append(splits[j].pop(k))
    train, val, test = ([p for _, _, p in sorted(s, key=lambda t: t[1])] for s in splits)  # input order
    return train, val, test


def clean_augmentations(size: int) -> list[tuple[float, A.BasicTransform]]:
    """Stage 2: (probability, transform) applied to the clean crop before the mark is drawn."""
    return [
        (1.0, A.RandomResizedCrop(size=(size, size), scale=(0.15, 1.0), ratio=(0.75, 4 / 3), p=1.0)),
        (0.5, A.HorizontalFlip(p=1.0)),
        (0.2, A.Rotate(limit=10, border_mode=cv2.BORDER_REFLECT_101, p=1.0)),
        (0.4, A.ColorJitter(brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.7, 1.3), hue=(-0.03, 0.03),
                            p=1.0)),
        (0.05, A.ToGray(p=1.0)),
        (0.25, A.RandomGamma(gamma_limit=(80, 120), p=1.0)),
        (0.05, A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 2), shadow_intensity_range=(0.2, 0.5),
                              p=1.0)),
        (0.03, A.RandomRain(slant_range=(-10, 10), drop_length=12, blur_value=3, brightness_coefficient=0.9,
                            rain_type="drizzle", p=1.0)),
    ]


def shared_artifacts() -> list[tuple[float, A.BasicTransform]]:
    """Stage 4: applied with one parameter draw to input, target and clean."""
    return reencode_artifacts() + [(0.05, A.PixelDropout(dropout_prob=0.003, drop_value=0, p=1.0))]


def input_artifacts() -> list[tuple[float, A.BasicTransform]]:
    """Stage 5: the watermarked input only."""
    return [(0.1, A.ImageCompression(quality_range=(80, 95), p=1.0))]


def apply(stage: list[tuple[float, A.BasicTransform]], rng: np.random.Generator, image: np.ndarray,
          **others: np.ndarray) -> dict[str, np.ndarray]:
    """Run each transform of a stage with its probability, seeding it from ``rng``; extra images
    passed as keywords get exactly the same parameters as ``image``."""
    out = {"image": image, **others}
    for p, t in stage:
        if rng.random() >= p:
            continue
        t.set_random_seed(int(rng.integers(2**31)))
        if others:
            t.add_targets({k: "image" for k in others})
        out = t(**out)
    return out


class WatermarkPairs(Dataset):
    """Synthetic watermark-removal samples over image files.

    Items are dicts of float32 tensors in [0, 1]: ``input`` (3,H,W), ``target`` (3,H,W),
    ``mask`` (1,H,W), ``clean`` (3,H,W), with H = W = ``size``. ``len`` is
    ``len(paths) * samples_per_image``. See the module docstring for what happens to a sample.

    ``renderer`` defaults to ``WatermarkRenderer(seed=seed)``; pass one built with a fixed seed
    (its logo bank depends on it) for a validation set that is the same in every run.
    ``cache_mb``: decoded photos kept per process (least recently used out first; 0 turns it off).
    ``clean_share``: the share of samples left unmarked (family ``"clean"``: input = the clean photo
    through the same artefacts, empty mask, α = 0), so that a network learns to leave clean photos
    (scene text and all) alone.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], size: int = 256, pairing: str = "supervised",
                 train: bool = True, seed: int = 0, samples_per_image: int = 1,
                 renderer: WatermarkRenderer | None = None, context: float = 1.0, cache_mb: float = 256.0,
                 clean_share: float = 0.0):
        if not 0.0 <= clean_share < 1.0:
            raise ValueError(f"clean_share is a share of the samples in [0, 1), not {clean_share}")
        self.clean_share = float(clean_share)
        if pairing not in PAIRINGS:
            raise ValueError(f"unknown pairing {pairing!r}: {' or '.join(PAIRINGS)}")
        if not paths:
            raise ValueError("WatermarkPairs needs at least one image path")
        self.paths = [str(p) for p in paths]
        self.size = int(size)
        self.pairing = pairing
        self.train = train
        self.seed = int(seed)
        self.samples_per_image = max(1, int(samples_per_image))
        self.renderer = renderer if renderer is not None else WatermarkRenderer(seed=seed)
        if context < 1.0:
            raise ValueError(f"context must be >= 1, got {context}")
        # Training samples with context > 1: the clean crop and its mark are made at
        # ``context``·size and a size×size window is cut from them (see ``sample``).
        self.context = float(context)
        self._canvas = max(self.size, round(self.size * self.context)) if train else self.size
        # The three augmentation stages, as (probability, transform) lists; editable.
        self.clean_stage = clean_augmentations(self._canvas)
        self.shared_stage = shared_artifacts()
        self.input_stage = input_artifacts()
        self._draws = 0
        # Decoded photos, least recently used first, up to ``cache_mb`` per process (each loader
        # worker keeps its own): decoding was a tenth of a sample's cost on a ~100-photo pool.
        self.cache_bytes = int(max(0.0, cache_mb) * 2**20)
        self._decoded: OrderedDict[str, np.ndarray] = OrderedDict()
        self._decoded_bytes = 0

    def __len__(self) -> int:
        return len(self.paths) * self.samples_per_image

    def _rng(self, index: int) -> np.random.Generator:
        if not self.train:
            return np.random.default_rng([self.seed, index])
        self._draws += 1
        info = get_worker_info()
        worker_seed = info.seed % 2**32 if info is not None else 0
        return np.random.default_rng([self.seed, index, self._draws, worker_seed])

    def _load(self, path: str) -> np.ndarray:
        """The photo at ``path`` decoded (stage 1), from the cache when it is there. Cached arrays
        are read-only, so a transform that wrote into its input would fail loudly instead of
        changing the photo for later samples."""
        img = self._decoded.get(path)
        if img is not None:
            self._decoded.move_to_end(path)
            return img
        img = load_rgb(path, min_side=2 * self._canvas)
        if img.nbytes <= self.cache_bytes:
            img.setflags(write=False)
            self._decoded[path] = img
            self._decoded_bytes += img.nbytes
            while self._decoded_bytes > self.cache_bytes:
                _, old = self._decoded.popitem(last=False)
                self._decoded_bytes -= old.nbytes
        return img

    def _crop(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A writable crop of ``img`` (never a view of a cached photo)."""
        if self.train:
            out = apply(self.clean_stage, rng, img)["image"]
            return out.copy() if np.may_share_memory(out, img) else out  # bounds only: O(1)
        h, w = img.shape[:2]
        if min(h, w) < self.size:
            s = self.size / min(h, w)
            img = cv2.resize(img, (max(self.size, round(w * s)), max(self.size, round(h * s))),
                             interpolation=cv2.INTER_CUBIC)
            h, w = img.shape[:2]
        y = int(rng.integers(0, h - self.size + 1))
        x = int(rng.integers(0, w - self.size + 1))
        return np.array(img[y : y + self.size, x : x + self.size])  # a copy, even of a whole-width crop

    def sample(self, index: int) -> dict[str, np.ndarray | str | dict]:
        """Item ``index`` as numpy arrays (uint8 images, bool mask) plus the mark's family and
        style: what ``__getitem__`` turns into tensors."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = self._rng(index)
        path = self.paths[index // self.samples_per_image]
        clean = self._crop(self._load(path), rng)
        if self.clean_share and rng.random() < self.clean_share:
            return self._unmarked(clean, rng, path)
        view1 = self.renderer.render(clean, rng, postprocess=False)
        marked, mask = view1.composite, view1.mask
        alpha, colour = view1.alpha, view1.colour
        if self.pairing == "supervised":
            target = clean
        else:
            target = self.renderer.render(clean, rng, family=view1.family, postprocess=False).composite
        if self._canvas != self.size:
            # usually a window holding part of the mark; marks are sized to the canvas, so one
            # often shows part of a mark larger than itself
            y0, x0 = mark_window(mask.shape, self.size, rng, mask if rng.random() < 0.85 else None)
            box = (slice(y0, y0 + self.size), slice(x0, x0 + self.size))
            marked, target, clean, mask, alpha, colour = (np.ascontiguousarray(a[box])
                                                          for a in (marked, target, clean, mask, alpha, colour))
        out = apply(self.shared_stage, rng, marked, target=target, clean=clean)
        inp, target, clean = out["image"], out["target"], out["clean"]
        halo = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        diff = channel_max(cv2.absdiff(inp, clean))
        mask = mask | (halo & (diff >= self.renderer.min_diff))
        inp = apply(self.input_stage, rng, inp)["image"]
        return {"input": inp, "target": target, "mask": mask, "clean": clean, "alpha": alpha, "colour": colour,
                "family": view1.family, "style": view1.style, "path": path}

    def _unmarked(self, clean: np.ndarray, rng: np.random.Generator, path: str) -> dict:
        """A sample with no mark: the clean crop (cut to ``size``) through the same artefacts."""
        if self._canvas != self.size:
            y0 = int(rng.integers(0, clean.shape[0] - self.size + 1))
            x0 = int(rng.integers(0, clean.shape[1] - self.size + 1))
            clean = np.ascontiguousarray(clean[y0 : y0 + self.size, x0 : x0 + self.size])
        out = apply(self.shared_stage, rng, clean, target=clean.copy(), clean=clean.copy())
        target, clean = out["target"], out["clean"]
        inp = apply(self.input_stage, rng, out["image"])["image"]
        h, w = clean.shape[:2]
        return {"input": inp, "target": target, "mask": np.zeros((h, w), bool), "clean": clean,
                "alpha": np.zeros((h, w), np.float32), "colour": np.zeros((h, w, 3), np.float32),
                "family": "clean", "style": {}, "path": path}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.sample(index)
        return {
            "input": _tensor(s["input"]),
            "target": _tensor(s["target"]),
            "mask": torch.from_numpy(s["mask"][None].astype(np.float32)),
            "clean": _tensor(s["clean"]),
            # the mark's opacity α (1,H,W) and colour W (3,H,W): the localiser's targets
            "alpha": torch.from_numpy(np.ascontiguousarray(s["alpha"][None])),
            "colour": torch.from_numpy(np.ascontiguousarray(s["colour"].transpose(2, 0, 1))),
        }


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


class CleanCrops(WatermarkPairs):
    """The clean half of ``WatermarkPairs``: items ``{"clean": (3,H,W)}`` only, for runs whose
    marks are composited on the training device (``model.synth.device_pairs.MarkBank``)."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = self._rng(index)
        clean = self._crop(self._load(self.paths[index // self.samples_per_image]), rng)
        return {"clean": _tensor(clean)}
