"""vspcd/service/resources.py: RLIMIT_NOFILE raising and descriptor accounting."""

from __future__ import annotations

import logging
import resource

import pytest

from vspc.vspcd.service import resources
from vspc.vspcd.service.resources import raise_nofile_limit


class FakeLimits:
    def __init__(self, soft: int, hard: int, *, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLimits:
    limits = FakeLimits(1024, 524288)
    monkeypatch.setattr(resources.resource, "getrlimit", limits.getrlimit)
    monkeypatch.setattr(resources.resource, "setrlimit", limits.setrlimit)
    return limits


def test_soft_limit_is_raised_to_hard(fake: FakeLimits, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vspc.vspcd.service.resources"):
        assert raise_nofile_limit() == (524288, 524288)
    assert fake.limits == (524288, 524288)
    assert "raised from 1024 to 524288" in caplog.text


def test_unlimited_hard_limit_is_capped_at_nr_open(
    fake: FakeLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.limits = (1024, resource.RLIM_INFINITY)
    monkeypatch.setattr(resources, "_nr_open", lambda: 1048576)
    assert raise_nofile_limit() == (1048576, resource.RLIM_INFINITY)
    assert fake.limits == (1048576, resource.RLIM_INFINITY)


def test_refusal_is_logged_not_raised(fake: FakeLimits, caplog: pytest.LogCaptureFixture) -> None:
    fake.refuse = True
    with caplog.at_level(logging.WARNING, logger="vspc.vspcd.service.resources"):
        assert raise_nofile_limit() == (1024, 524288)
    assert "cannot raise open-file limit" in caplog.text


def test_already_at_hard_limit_changes_nothing(fake: FakeLimits) -> None:
    fake.limits = (4096, 4096)
    assert raise_nofile_limit() == (4096, 4096)


def test_real_limit_can_be_raised() -> None:
    soft, hard = raise_nofile_limit()
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
