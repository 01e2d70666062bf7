"""The test helpers that read generated Triton (tests/filecheck.py) pick the right lines."""

from __future__ import annotations

import pytest

from tests.filecheck import branches

SRC = """\
def k(x):
    a = 1
    if EVEN_N:  # one loop
        for j in range(0, 4):
            if POS:
                b = 2
            else:
                b = 3

        c = 4
    else:
        for j in range(0, 2):
            b = 5
    d = 6
    if LAST:
        e = 7
"""


def test_branches_stop_at_the_if_indentation() -> None:
    then, other = branches(SRC, "EVEN_N:")
    assert then.count("for j") == 1 and "c = 4" in then and "b = 5" not in then
    assert other.count("for j") == 1 and "b = 5" in other and "d = 6" not in other
    inner_then, inner_else = branches(SRC, "POS:")
    assert (inner_then.strip(), inner_else.strip()) == ("b = 2", "b = 3")
    assert branches(SRC, "LAST:") == ("        e = 7", "")
    with pytest.raises(AssertionError, match="no `if MISSING"):
        branches(SRC, "MISSING")
