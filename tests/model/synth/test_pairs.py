"""WatermarkPairs and split_paths: shapes and dtypes, pairings, seeded validation, worker-safe
randomness, augmentations that keep image and mask aligned, stable splits."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from model.synth.layers import channel_max
from model.synth.pairs import (
    WatermarkPairs,
    clean_augmentations,
    load_rgb,
    one_opencv_thread,
    shared_artifacts,
    split_paths,
)
from model.synth.renderer import WatermarkRenderer
from storage.queries import split_for


def _photo(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / (7 + seed)), np.cos(yy / 11), np.sin((xx + yy) / 17)], -1) * 90 + 120
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, (h, w) in enumerate([(120, 160), (150, 100), (48, 60), (200, 200)]):  # one smaller than a crop
        p = folder / (f"p{i}.jpg" if i % 2 else f"p{i}.png")
        Image.fromarray(_photo(i, h, w)).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def renderer():
    return WatermarkRenderer(seed=0)


@pytest.mark.parametrize("pairing", ["supervised", "self-supervised"])
def test_items_have_the_right_shapes_and_dtypes(photos, renderer, pairing):
    ds = WatermarkPairs(photos, size=64, pairing=pairing, seed=0, samples_per_image=2, renderer=renderer)
    assert len(ds) == 8
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"input", "target", "mask", "clean", "alpha", "colour"}
        for key, channels in (("input", 3), ("target", 3), ("mask", 1), ("clean", 3), ("alpha", 1), ("colour", 3)):
            t = item[key]
            assert t.shape == (channels, 64, 64) and t.dtype == torch.float32, key
            assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0, key
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
        assert item["mask"].sum() > 0
        marked = item["alpha"] > 0  # the localiser's targets live inside the mask
        assert marked.any() and bool((item["mask"][marked] == 1).all())
        assert float(item["colour"][:, ~marked[0]].abs().max()) == 0.0
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["input"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)


def test_supervised_target_is_the_clean_crop(photos, renderer):
    ds = WatermarkPairs(photos, size=64, seed=1, renderer=renderer)
    for i in range(len(ds)):
        s = ds.sample(i)
        assert np.array_equal(s["target"], s["clean"])
        assert not np.array_equal(s["input"], s["clean"])


@pytest.mark.parametrize("context", [1.0, 2.0])
def test_a_clean_share_of_samples_carries_no_mark(photos, renderer, context):
    ds = WatermarkPairs(photos, size=48, seed=3, samples_per_image=40, renderer=renderer, clean_share=0.3,
                        context=context)
    samples = [ds.sample(i) for i in range(len(ds))]
    clean = [s for s in samples if s["family"] == "clean"]
    assert 0.2 < len(clean) / len(samples) < 0.4
    for s in clean:
        assert s["input"].shape == (48, 48, 3) and not s["mask"].any() and not s["alpha"].any()
        assert np.array_equal(s["target"], s["clean"]) and not s["colour"].any()
    if context == 1.0:  # (a window cut from a larger canvas may miss its mark)
        assert all(s["mask"].any() for s in samples if s["family"] != "clean")
    fixed = WatermarkPairs(photos, size=48, seed=3, train=False, samples_per_image=10, renderer=renderer,
                           clean_share=0.5)
    i = next(i for i in range(len(fixed)) if fixed.sample(i)["family"] == "clean")
    item = fixed[i]
    assert float(item["mask"].sum()) == 0.0 and float(item["alpha"].sum()) == 0.0
    assert item["input"].shape == item["alpha"].shape[:0] + (3, 48, 48)


def test_clean_share_outside_its_range_is_refused(photos, renderer):
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="clean_share"):
            WatermarkPairs(photos, size=48, renderer=renderer, clean_share=bad)


def test_self_supervised_target_is_another_mark_of_the_same_family(photos, renderer):
    ds = WatermarkPairs(photos, size=64, pairing="self-supervised", seed=2, renderer=renderer)
    ds.input_stage = []
    ds.shared_stage = []
    for i in range(len(ds)):
        s = ds.sample(i)
        view2 = channel_max(cv2.absdiff(s["target"], s["clean"])) >= 2
        assert view2.any(), "the target carries a mark too"
        assert not np.array_equal(s["target"], s["input"]), "drawn independently"
        # the mask is view 1's: exactly where the input differs from the clean crop
        view1 = channel_max(cv2.absdiff(s["input"], s["clean"])) >= 2
        assert np.array_equal(s["mask"], view1)
    # the same family: rebuild the sample's draws and compare with a second render
    rng = np.random.default_rng([2, 0])
    ds_val = WatermarkPairs(photos, size=64, pairing="self-supervised", seed=2, train=False, renderer=renderer)
    ds_val.shared_stage, ds_val.input_stage = [], []
    clean = ds_val._crop(load_rgb(photos[0], min_side=128), rng)
    v1 = renderer.render(clean, rng, postprocess=False)
    v2 = renderer.render(clean, rng, family=v1.family, postprocess=False)
    s = ds_val.sample(0)
    assert np.array_equal(s["input"], v1.composite) and np.array_equal(s["target"], v2.composite)
    assert v2.family == v1.family == s["family"]


def test_validation_items_are_fixed_per_index(photos, renderer):
    a = WatermarkPairs(photos, size=64, train=False, seed=3, renderer=renderer)
    b = WatermarkPairs(photos, size=64, train=False, seed=3, renderer=WatermarkRenderer(seed=0))
    for i in range(len(a)):
        first, again, other = a[i], a[i], b[i]
        for k in first:
            assert torch.equal(first[k], again[k]), k  # the same every epoch
            assert torch.equal(first[k], other[k]), k  # and every run
    assert not torch.equal(a[0]["input"], a[1]["input"])
    c = WatermarkPairs(photos, size=64, train=False, seed=4, renderer=renderer)
    assert not torch.equal(a[0]["input"], c[0]["input"])


_DIGEST = """
import hashlib, sys
from model.synth.pairs import WatermarkPairs
ds = WatermarkPairs(sys.argv[1:], size=64, train=False, seed=3, pairing="self-supervised")
h = hashlib.sha256()
for i in range(len(ds)):
    for k, t in sorted(ds[i].items()):
        h.update(t.numpy().tobytes())
print(h.hexdigest())
"""


@pytest.mark.slow
def test_validation_items_are_the_same_in_another_process(photos):
    """A new process (another hash seed, fresh font discovery and logo bank) gives the same set."""
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", _DIGEST, *photos], capture_output=True, text=True, env=env,
                         timeout=300, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    ds = WatermarkPairs(photos, size=64, train=False, seed=3, pairing="self-supervised")
    h = hashlib.sha256()
    for i in range(len(ds)):
        for _, t in sorted(ds[i].items()):
            h.update(t.numpy().tobytes())
    assert out.stdout.strip() == h.hexdigest()


def test_training_items_change_every_draw_but_repeat_under_a_seed(photos, renderer):
    a = WatermarkPairs(photos, size=64, seed=5, renderer=renderer)
    b = WatermarkPairs(photos, size=64, seed=5, renderer=renderer)
    first = a[0]["input"]
    assert torch.equal(first, b[0]["input"])
    assert not torch.equal(first, a[0]["input"])  # a new epoch, a new sample


def test_workers_draw_different_samples(photos, renderer):
    ds = WatermarkPairs(photos[:1], size=64, seed=6, samples_per_image=8, renderer=renderer)
    loader = DataLoader(ds, batch_size=1, num_workers=2)
    inputs = [b["input"][0] for b in loader]
    digests = {hashlib.sha256(x.numpy().tobytes()).hexdigest() for x in inputs}
    assert len(digests) == 8


class _OpenCVThreads(torch.utils.data.Dataset):
    """Reports the OpenCV thread count of the process that draws the item."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return cv2.getNumThreads()


def test_loader_workers_started_in_one_opencv_thread_keep_one():
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    cv2.GaussianBlur(np.zeros((1024, 1024), np.float32), (15, 15), 3)  # the pool is running
    try:
        plain = [int(x) for x in DataLoader(_OpenCVThreads(), batch_size=None, num_workers=1)]
        with one_opencv_thread():
            it = iter(DataLoader(_OpenCVThreads(), batch_size=None, num_workers=1))
        assert cv2.getNumThreads() == 3  # restored in this process
        one = [int(x) for x in it]
    finally:
        cv2.setNumThreads(before)
    assert plain == [3, 3]  # a forked worker inherits the pool
    assert one == [1, 1]


def _only(stage, name):
    return [(1.0, t) for p, t in stage if type(t).__name__ == name]


AUGMENTATIONS = [type(t).__name__ for _, t in clean_augmentations(64)]
ARTIFACTS = [type(t).__name__ for _, t in shared_artifacts()]


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_clean_augmentations_keep_image_and_mask_aligned(photos, renderer, name):
    """Each clean-crop transform, forced on: input differs from clean exactly on the mask."""
    ds = WatermarkPairs(photos, size=64, seed=7, renderer=renderer)
    crop = [(1.0, t) for p, t in ds.clean_stage[:1]]
    ds.clean_stage = crop + (_only(ds.clean_stage, name) if name != "RandomResizedCrop" else [])
    ds.shared_stage, ds.input_stage = [], []
    changed = 0
    for i in range(len(ds)):
        s = ds.sample(i)
        diff = channel_max(cv2.absdiff(s["input"], s["clean"]))
        assert np.array_equal(s["mask"], diff >= renderer.min_diff), name
        assert not diff[~s["mask"]].any(), name
        changed += s["mask"].any()
    assert changed == len(ds)


@pytest.mark.parametrize("name", ARTIFACTS)
def test_shared_artifacts_hit_input_and_target_alike(photos, renderer, name):
    """Each artifact, forced on, changes input, target and clean with one draw: away from the
    mark (further for JPEG, whose blocks and chroma samples straddle it) input == target."""
    ds = WatermarkPairs(photos, size=128, seed=8, renderer=WatermarkRenderer(seed=0, families=["logo", "badge"]))
    ds.shared_stage = _only(ds.shared_stage, name)
    ds.input_stage = []
    reach = {"ImageCompression": 41, "GaussianBlur": 5}.get(name, 1)
    checked = 0
    for i in range(len(ds)):
        s = ds.sample(i)
        assert np.array_equal(s["target"], s["clean"])
        near = cv2.dilate(s["mask"].astype(np.uint8), np.ones((reach, reach), np.uint8)).astype(bool)
        if (~near).sum() == 0:
            continue
        diff = channel_max(cv2.absdiff(s["input"], s["clean"]))
        if name == "GaussianBlur":  # the halo pixels that differ visibly joined the mask
            assert diff[~s["mask"]].max() < renderer.min_diff
        else:
            assert not diff[~near].any(), name
        assert (diff[s["mask"]] > 0).mean() > 0.8, "the mask still sits on the mark"
        checked += 1
    assert checked >= 2


def test_input_only_artifacts_leave_the_target_alone(photos, renderer):
    ds = WatermarkPairs(photos, size=64, seed=9, renderer=renderer)
    ds.shared_stage = []
    ds.input_stage = [(1.0, t) for _, t in ds.input_stage]
    s = ds.sample(0)
    assert np.array_equal(s["target"], s["clean"])
    ref = WatermarkPairs(photos, size=64, seed=9, renderer=renderer)
    ref.shared_stage, ref.input_stage = [], []
    r = ref.sample(0)
    assert np.array_equal(r["mask"], s["mask"])  # the mask is not grown for input-only artifacts
    assert not np.array_equal(r["input"], s["input"])


@pytest.mark.parametrize("pairing", ["supervised", "self-supervised"])
def test_context_cuts_a_crop_from_a_larger_marked_canvas(photos, renderer, pairing):
    """context=2: the mark is drawn on a 128 px canvas and a 64 px window cut from it, so windows
    show parts of marks larger than themselves; everything stays aligned, validation is untouched."""
    ds = WatermarkPairs(photos, size=64, pairing=pairing, seed=3, samples_per_image=6, renderer=renderer, context=2.0)
    marked_share = []
    for i in range(len(ds)):
        s = ds.sample(i)
        assert s["input"].shape == s["target"].shape == s["clean"].shape == (64, 64, 3)
        assert s["mask"].shape == (64, 64)
        marked_share.append(s["mask"].mean())
        if pairing == "supervised":
            assert np.array_equal(s["target"], s["clean"])
            if s["mask"].any():  # where the input differs from the clean crop by more than noise, the mask says so
                diff = channel_max(cv2.absdiff(s["input"], s["clean"]))
                assert (s["mask"][diff > 40]).mean() > 0.9
    assert np.mean([m > 0 for m in marked_share]) >= 0.8  # most windows hold part of their mark
    val = WatermarkPairs(photos, size=64, train=False, seed=3, renderer=renderer, context=2.0)
    ref = WatermarkPairs(photos, size=64, train=False, seed=3, renderer=renderer)
    assert np.array_equal(val.sample(0)["input"], ref.sample(0)["input"])
    with pytest.raises(ValueError, match="context"):
        WatermarkPairs(photos, renderer=renderer, context=0.5)


def test_small_photos_are_upscaled_for_validation(photos, renderer):
    ds = WatermarkPairs([photos[2]], size=64, train=False, renderer=renderer)  # 48x60 photo
    assert ds[0]["input"].shape == (3, 64, 64)


def test_decoded_photos_are_cached_within_budget_without_changing_samples(photos, renderer, tmp_path):
    cached = WatermarkPairs(photos, size=64, seed=8, samples_per_image=3, renderer=renderer)
    plain = WatermarkPairs(photos, size=64, seed=8, samples_per_image=3, renderer=renderer, cache_mb=0)
    for i in list(range(len(cached))) * 2:  # the second round comes from the cache
        a, b = cached.sample(i), plain.sample(i)
        for key in ("input", "target", "mask", "clean"):
            assert np.array_equal(a[key], b[key]), (i, key)
    assert set(cached._decoded) == set(photos) and not plain._decoded
    assert all(not img.flags.writeable for img in cached._decoded.values())
    # a photo exactly one crop wide: the validation crop is a copy, not a view of the cached photo
    exact = tmp_path / "exact.png"
    Image.fromarray(_photo(7, 80, 64)).save(exact)
    val = WatermarkPairs([str(exact)], size=64, train=False, seed=3, renderer=renderer)
    first = val.sample(0)
    assert np.array_equal(val.sample(0)["clean"], first["clean"])
    assert val._crop(val._load(str(exact)), np.random.default_rng(0)).flags.writeable
    # a cached photo is not read again (here: gone from disk), and the budget holds
    copy = tmp_path / "only.png"
    copy.write_bytes(open(photos[3], "rb").read())
    one = WatermarkPairs([str(copy), photos[0]], size=64, seed=9, renderer=renderer, cache_mb=0.15)  # ~1 photo
    one.sample(0)
    copy.unlink()
    assert one.sample(0)["input"].shape == (64, 64, 3)
    one.sample(1)  # the other photo pushes it out
    assert one._decoded_bytes <= one.cache_bytes and list(one._decoded) == [photos[0]]
    with pytest.raises(FileNotFoundError):
        one.sample(0)


def test_bad_arguments(photos, renderer):
    with pytest.raises(ValueError, match="pairing"):
        WatermarkPairs(photos, pairing="both", renderer=renderer)
    with pytest.raises(ValueError):
        WatermarkPairs([], renderer=renderer)
    with pytest.raises(IndexError):
        WatermarkPairs(photos, renderer=renderer).sample(99)


def test_split_paths_is_stable_and_follows_the_catalog_rule(tmp_path):
    paths = []
    for i in range(60):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(f"image {i}".encode())
        paths.append(str(p))
    train, val, test = split_paths(paths)
    assert sorted(train + val + test) == sorted(paths)
    assert train and val and test and len(train) > len(val)
    for split, members in (("train", train), ("val", val), ("test", test)):
        for p in members:
            with open(p, "rb") as fh:
                assert split_for(hashlib.sha256(fh.read()).hexdigest()) == split
    # adding and removing files never moves the others
    train2, val2, test2 = split_paths(paths[10:] + [str(tmp_path / "f0.bin")])
    for before, after in ((train, train2), (val, val2), (test, test2)):
        assert set(after) <= set(before) | {str(tmp_path / "f0.bin")}
    assert train == [p for p in paths if p in set(train)]  # input order kept


def test_split_paths_fills_every_split_for_tiny_sets(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"t{i}.bin"
        p.write_bytes(bytes([i]))
        paths.append(str(p))
    train, val, test = split_paths(paths)
    assert len(train) == len(val) == len(test) == 1


def test_load_rgb_orientation_transparency_and_depth(tmp_path):
    img = Image.fromarray(_photo(0, 40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the file is stored landscape, shown portrait
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "rot.jpg").shape == (60, 40, 3)
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:5] = (255, 0, 0, 255)  # top half opaque red, bottom half transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and tuple(out[0, 0]) == (255, 0, 0) and tuple(out[9, 9]) == (255, 255, 255)
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
    assert tuple(load_rgb(tmp_path / "deep.png")[0, 0]) == (156, 156, 156)
    big = tmp_path / "big.jpg"
    Image.fromarray(_photo(1, 1200, 1600)).save(big)
    assert min(load_rgb(big, min_side=256).shape[:2]) >= 256
    assert load_rgb(big, min_side=256).shape[0] < 1200  # decoded at a reduced DCT scale
