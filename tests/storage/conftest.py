"""The catalog suite runs on both backends: every test here that asks for ``settings`` (and so
``catalog``) runs once on SQLite and once on a PostgreSQL database of its own, on the server
that ``tests/servers/pgserver.py`` starts on 127.0.0.1.

A test whose name contains ``sqlite`` checks something only SQLite has (pragmas, the file) and
runs on SQLite only.
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request) -> str:
    return request.param


@pytest.fixture
def settings(backend, tmp_path, request):
    from pipeline.config import load_settings

    overrides = {"home": tmp_path / "home"}
    if backend == "postgresql":
        overrides["catalog_url"] = request.getfixturevalue("pg_url")
    return load_settings(**overrides)


def pytest_collection_modifyitems(items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec and callspec.params.get("backend") == "postgresql" and "sqlite" in item.name.split("[")[0]:
            item.add_marker(pytest.mark.skip(reason="SQLite-specific check"))
