"""The fake backend passes the contract the real backends pass."""

import pytest

from tests.contract import BackendContract
from tests.fakes import FakeBackend


class TestFakeBackend(BackendContract):
    @pytest.fixture
    def backend(self) -> FakeBackend:
        return FakeBackend()
