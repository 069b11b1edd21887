"""Dedup's and triage's named queries: stored codes, window codes, groups, what to score and what
to train a detector on."""

from __future__ import annotations

from storage import hashes, pools, status
from storage import queries as q


def _key(sha: str) -> str:
    return f"{sha[:2]}/{sha}"


def _img(sha: str) -> dict:
    return {"sha256": sha, "blob_key": _key(sha), "mime": "image/png", "width": 100, "height": 80,
            "bytes": 1234, "source": "test"}


def _three(catalog) -> list[int]:
    with catalog.write() as s:
        ids = q.add_images(s, [_img(c * 64) for c in "abc"])
    return [ids[c * 64] for c in "abc"]


def test_codes_and_windows_round_trip_and_are_replaced(catalog):
    a, b, c = _three(catalog)
    with catalog.write() as s:
        hashes.store_hashes(s, "v1", [(a, -1, 2**63 - 1), (b, 5, 6)],
                            [(a, 1, 10, 11), (a, 2, -12, 13), (b, 1, 14, 15)])
    with catalog.session() as s:
        assert hashes.hash_rows(s, ["id", "phash", "dhash", "hash_impl"]) == [
            (a, -1, 2**63 - 1, "v1"), (b, 5, 6, "v1"), (c, None, None, None)]
        assert sorted(hashes.window_codes(s, "v1")) == sorted([(a, 10, 11), (a, -12, 13), (b, 14, 15)])
        assert hashes.window_codes(s, "v0") == []
        assert hashes.images_with_windows(s, 2) == {a} and hashes.images_with_windows(s, 1) == {b}
    with catalog.write() as s:  # a rehash replaces the image's windows, and leaves the others
        hashes.store_hashes(s, "v2", [(a, 7, 8)], [(a, 1, 20, 21)])
        status.mark_hash_failed(s, b)
    with catalog.session() as s:
        assert hashes.window_codes(s, "v2") == [(a, 20, 21)]
        assert hashes.window_codes(s, "v1") == []  # b failed: its windows no longer count
        assert [r[0] for r in hashes.hash_rows(s, ["id"])] == [a, c]


def test_groups_scoring_and_detector_training_keys(catalog):
    a, b, c = _three(catalog)
    with catalog.write() as s:
        hashes.set_groups(s, [{"id": a, "group_id": a, "dedup_role": "canonical"},
                              {"id": b, "group_id": a, "dedup_role": "duplicate"}])
        status.mark_triaged(s, c, "watermarked", 0.9, "det-1")
    with catalog.session() as s:
        assert {i.id: (i.group_id, i.dedup_role) for i in q.images_by_id(s, [a, b, c])} == {
            a: (a, "canonical"), b: (a, "duplicate"), c: (None, None)}
        assert q.images_to_score(s, "det-1") == [a, b]
        assert q.images_to_score(s, "det-2") == [a, b, c]
        assert sorted(q.image_blobs(s, [a, c])) == [(a, "a" * 64, _key("a" * 64)), (c, "c" * 64, _key("c" * 64))]
        assert pools.detector_training_keys(s) == [_key("a" * 64), _key("c" * 64)]  # one per group
        assert pools.detector_training_keys(s, exclude_watermarked=True) == [_key("a" * 64)]
