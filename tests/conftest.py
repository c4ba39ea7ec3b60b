import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/serve/" in item.nodeid:
            item.add_marker(pytest.mark.serve)
