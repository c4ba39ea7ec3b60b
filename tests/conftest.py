from collections.abc import Iterator
from pathlib import Path

import pytest

from models.train import train_repository


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/serve/" in item.nodeid:
            item.add_marker(pytest.mark.serve)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """All ten models trained on the tiny profile, once per session."""
    root = tmp_path_factory.mktemp("model_repo")
    train_repository(root, profile="tiny")
    yield root
