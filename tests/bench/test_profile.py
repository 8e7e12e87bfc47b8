"""py-spy's collapsed stacks summed by function: own samples and samples anywhere below."""

from __future__ import annotations

import pytest

from bench.profile import summarise, to_markdown


def test_functions_are_ranked_by_own_samples_with_their_inclusive_share() -> None:
    raw = [
        "main (a.py:1);relay (a.py:9);loads (json.py:3) 6",
        "main (a.py:1);relay (a.py:12) 2",
        "main (a.py:1);write (b.py:4) 2",
        "not a stack line",
    ]
    shares = summarise(raw)
    # A function's lines count together: relay at lines 9 and 12 is one function.
    assert [s.function for s in shares] == [
        "loads (json.py)",
        "relay (a.py)",
        "write (b.py)",
        "main (a.py)",
    ]
    assert (shares[0].self_share, shares[0].inclusive_share) == (0.6, 0.6)
    assert (shares[1].self_share, shares[1].inclusive_share) == (0.2, 0.8)
    assert shares[3].inclusive_share == pytest.approx(1.0)
    assert summarise([]) == []
    assert "| 60.0% | 60.0% | `loads (json.py)` |" in to_markdown("t", shares, "n")


def test_a_recursive_frame_counts_once_per_sample_in_the_inclusive_share() -> None:
    shares = summarise(["f (a.py:1);f (a.py:1);g (a.py:2) 4"])
    by_name = {s.function: s for s in shares}
    assert by_name["f (a.py)"].inclusive_share == 1.0
