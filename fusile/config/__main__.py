"""`python -m fusile.config`: every environment variable fusile reads, its default, its value
in this environment and what it does."""

from fusile.config import table

print(table())
