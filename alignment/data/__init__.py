"""Data layer: row types, readers and tokenization. :class:`DataError` is the error for bad input data."""

from alignment.data.formats import DataError

__all__ = ["DataError"]
