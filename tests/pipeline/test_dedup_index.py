"""The Hamming radius indexes (multi-index hashing answers exactly what brute force answers) and
the perceptual codes (imagehash's pHash/dHash bit for bit, signed storage, bad bytes)."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from PIL import Image

from pipeline.hashindex import BRUTE_FORCE_MAX, BruteForceIndex, MultiIndexHash, hamming, make_index
from pipeline.images import BadImage
from pipeline.perceptual import N_WINDOWS, hash_image, hash_windows, reduced_gray, to_signed, to_unsigned


def _random_codes(rng: np.random.Generator, n: int, words: int) -> np.ndarray:
    return rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)


def _flip(code: np.ndarray, bits: np.ndarray) -> np.ndarray:
    out = code.copy()
    for b in bits:
        out[b // 64] ^= np.uint64(1) << np.uint64(b % 64)
    return out


def _planted(rng: np.random.Generator, codes: np.ndarray, n: int, max_flips: int) -> np.ndarray:
    """Queries near existing codes (0..max_flips bits away), plus a few far ones."""
    nbits = 64 * codes.shape[1]
    qs = [_flip(codes[rng.integers(len(codes))], rng.choice(nbits, rng.integers(0, max_flips + 1), replace=False))
          for _ in range(n)]
    return np.array(qs + list(_random_codes(rng, 5, codes.shape[1])))


@pytest.mark.parametrize("words", [1, 2])
def test_multi_index_hashing_answers_exactly_like_brute_force(words):
    rng = np.random.default_rng(words)
    codes = _random_codes(rng, 20_000, words)
    # clusters of near codes, so that answers hold several ids at several distances
    centres = codes[:200]
    near = np.array([_flip(c, rng.choice(64 * words, rng.integers(1, 12), replace=False)) for c in centres for _ in range(3)])
    codes = np.concatenate([codes, near])
    ids = rng.permutation(len(codes)).astype(np.int64) * 7  # ids need not be positions
    position = np.empty(ids.max() + 1, dtype=np.int64)
    position[ids] = np.arange(len(ids))
    brute, mih = make_index(codes, ids, words, kind="brute"), make_index(codes, ids, words, kind="mih")
    assert isinstance(brute, BruteForceIndex) and isinstance(mih, MultiIndexHash)
    queries = _planted(rng, codes, 60, 14 * words)
    checked = 0
    for radius in (0, 3, 8, 12, 22, 31) if words == 2 else (0, 4, 10, 15):
        for qcode in queries:
            a_ids, a_d = brute.query(qcode, radius)
            b_ids, b_d = mih.query(qcode, radius)
            assert np.array_equal(a_ids, b_ids) and np.array_equal(a_d, b_d), radius
            assert np.all(a_d <= radius)
            assert np.array_equal(a_d, hamming(codes[position[a_ids]], qcode))
            checked += len(a_ids)
    assert checked > 150  # the queries did find things
    rows_a, ids_a, d_a = brute.pairs_within(queries, 12)
    rows_b, ids_b, d_b = mih.pairs_within(queries, 12)
    assert sorted(zip(rows_a.tolist(), ids_a.tolist(), d_a.tolist())) == sorted(
        zip(rows_b.tolist(), ids_b.tolist(), d_b.tolist()))


def test_brute_force_distances_are_hamming_distances():
    rng = np.random.default_rng(3)
    codes = _random_codes(rng, 500, 2)
    index = make_index(codes, np.arange(500))
    q = codes[17]
    ids, d = index.query(q, 128)
    assert len(ids) == 500 and ids[0] == 17 and d[0] == 0
    expected = [bin(int(a) ^ int(q[0])).count("1") + bin(int(b) ^ int(q[1])).count("1") for a, b in codes[ids]]
    assert d.tolist() == expected and d.tolist() == sorted(d.tolist())


def test_multi_index_hashing_sees_codes_added_after_the_build():
    rng = np.random.default_rng(4)
    codes = _random_codes(rng, 5_000, 2)
    mih = make_index(codes, np.arange(5_000), kind="mih")
    extra = np.array([_flip(codes[i], rng.choice(128, 5, replace=False)) for i in range(50)])
    mih.add(extra, np.arange(10_000, 10_050))  # waits in the brute-force tail
    assert mih._built == 5_000
    ids, d = mih.query(codes[7], 6)
    assert 10_007 in ids.tolist() and 7 in ids.tolist()
    more = _random_codes(rng, 2_000, 2)
    mih.add(more, np.arange(20_000, 22_000))  # outgrows the tail: rebuilt
    assert mih._built == len(mih) == 7_050
    ids, _ = mih.query(more[3], 0)
    assert ids.tolist() == [20_003]


def test_make_index_picks_brute_force_up_to_its_limit():
    rng = np.random.default_rng(5)
    assert isinstance(make_index(_random_codes(rng, 10, 2), np.arange(10)), BruteForceIndex)
    assert BRUTE_FORCE_MAX == 100_000


def _jpeg(im: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_codes_are_imagehash_phash_and_dhash_bit_for_bit():
    import skimage.data

    for arr in (skimage.data.astronaut(), skimage.data.coffee()):
        gray = reduced_gray(_jpeg(Image.fromarray(arr)))
        assert 32 <= min(gray.size) < 64
        codes = hash_windows(gray)
        assert codes.shape == (1 + N_WINDOWS, 2)
        assert int(codes[0, 0]) == int(str(imagehash.phash(gray)), 16)
        assert int(codes[0, 1]) == int(str(imagehash.dhash(gray)), 16)
        assert len({(int(a), int(b)) for a, b in codes}) == 1 + N_WINDOWS  # windows differ


def test_signed_storage_round_trips():
    for v in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        s = to_signed(v)
        assert -(2**63) <= s < 2**63 and to_unsigned(s) == v
    import skimage.data

    codes = hash_image(_jpeg(Image.fromarray(skimage.data.chelsea())))
    assert codes.dtype == np.int64


def test_same_picture_in_two_formats_hashes_alike_and_bad_bytes_raise():
    import skimage.data

    im = Image.fromarray(skimage.data.rocket())
    png = io.BytesIO()
    im.save(png, "PNG")
    a, b = hash_image(_jpeg(im)).view(np.uint64), hash_image(png.getvalue()).view(np.uint64)
    assert hamming(a[:1], b[:1])[0] <= 4
    with pytest.raises(BadImage) as exc:
        hash_image(_jpeg(im)[:500])
    assert exc.value.reason == "corrupt"
    with pytest.raises(BadImage):
        hash_image(b"<html>not an image</html>")
