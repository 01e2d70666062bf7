"""A module with a broken fused function, to check errors point into the user's file."""

from fusile import fused


@fused
def uses_unknown(x):
    return x * scale_unknown
