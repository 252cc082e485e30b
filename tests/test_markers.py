"""The ``mm`` marker: tests that need mmseg / mmdet / mmcv ops skip cleanly where those are absent."""
import sys
import types

import conftest
import pytest


def test_mm_reason_names_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, 'mmseg.models', None)    # what an absent package looks like
    reason = conftest.mm_unavailable_reason()
    assert reason is not None and 'mmseg' in reason


def test_mm_marked_test_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(conftest, '_MM_REASON', ['ModuleNotFoundError: No module named mmdet'])
    item = types.SimpleNamespace(get_closest_marker=lambda name: object() if name == 'mm' else None)
    with pytest.raises(pytest.skip.Exception, match='not importable: ModuleNotFoundError: No module named mmdet'):
        conftest.pytest_runtest_setup(item)
    plain = types.SimpleNamespace(get_closest_marker=lambda name: None)
    assert conftest.pytest_runtest_setup(plain) is None
