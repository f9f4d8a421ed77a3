"""The guard against regular expressions a crafted prompt could make backtrack for seconds."""

from __future__ import annotations

import pytest

from epp.requestcontrol.regex_budget import check_pattern


@pytest.mark.parametrize(
    "pattern",
    [
        r"\bdef\s?\w+\(",
        r"(?i)stack ?trace",
        r"(?:python|rust|golang)",
        r"\s{1,4}\w{1,32}",
        r"(?:ab)+c",
        r"^\s*(?:SELECT|WITH)\b",
        r"(?<=\s)import\s[a-z_]{1,40}",
        r"(?=x)y+",
    ],
)
def test_patterns_with_bounded_backtracking_are_accepted(pattern: str) -> None:
    check_pattern(pattern, 1024)


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a+)+b", "exponentially"),
        (r"(a|aa)*b", "exponentially"),
        (r"(a?a)+b", "exponentially"),
        (r"(?>a+)+b", "exponentially"),
        (r"(x)\1", "backreferences"),
        (r"\w+\w+x", "could backtrack"),
        (r".*a.*b", "could backtrack"),
        (r"\w+\s+\w+", "could backtrack"),
        (r"(?=\w+)\w+y", "could backtrack"),
    ],
)
def test_patterns_that_can_backtrack_for_seconds_are_refused(pattern: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_pattern(pattern, 1024)


def test_the_bound_follows_the_text_length() -> None:
    check_pattern(r"\w+\s+x", 100)
    with pytest.raises(ValueError, match="1024-character"):
        check_pattern(r"\w+\s+x", 1024)
