"""Fixtures of the server's tests: an app around a fake policy, under FastAPI's TestClient (which runs the
app's lifespan, so the batcher is started and stopped as under uvicorn)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.fixture
def serve() -> Callable:
    """`with serve(policy, max_batch=4, ...) as client:` an app serving `policy` with those settings."""
    from fastapi.testclient import TestClient

    from lapa.serve.app import create_app
    from lapa.serve.serve_config import ServeConfig

    @contextmanager
    def make(policy, **settings) -> Iterator[TestClient]:
        app = create_app(policy, ServeConfig(policy="fake", **settings))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client

    return make
