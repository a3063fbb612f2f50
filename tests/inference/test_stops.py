"""The public stop-string helpers shared by the engine and the API server's scheduler."""

from __future__ import annotations

from llamaforge.inference.stops import first_stop, held_back


def test_first_stop_finds_the_earliest_stop_string():
    assert first_stop("a ### b\nUser:", ("\nUser:", "###")) == 2
    assert first_stop("no stop here", ("###",)) is None
    assert first_stop("empty stops are ignored", ("",)) is None


def test_held_back():
    assert held_back("The answer is ##", ("###",)) == 2
    assert held_back("The answer", ("###",)) == 0
    assert held_back("caf\ufffd", ()) == 1
    assert held_back("User", ("\nUser:",)) == 0
    assert held_back("ok\nUs", ("\nUser:", "\n\n")) == 3
