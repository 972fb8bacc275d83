"""The worker's command line as the entrypoint builds it."""

from __future__ import annotations

import pytest

from tollgate_analytics.main import faust_log_level


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("WARNING", "warn"),
        ("warning", "warn"),
        ("INFO", "info"),
        ("DEBUG", "debug"),
        ("ERROR", "error"),
        ("CRITICAL", "crit"),
    ],
)
def test_python_level_names_become_faust_level_names(level: str, expected: str) -> None:
    assert faust_log_level(level) == expected
