"""The error taxonomy: corrupt input, missing data, unsupported.

Every error that reaches the command line is one line naming the file (or source) and, where known,
the byte offset at which the problem was found.
"""

from __future__ import annotations


class KdlayoutError(Exception):
    """Base class of every error kdlayout raises on purpose."""

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None) -> None:
        self.message = message
        self.path = path
        self.offset = offset
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.offset is not None:
            where.append(f"offset {self.offset:#x}")
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def located(self, path: str | None = None, offset: int | None = None) -> KdlayoutError:
        """Fill in the path and offset if they are not known yet; returns self."""
        if self.path is None and path is not None:
            self.path = path
        if self.offset is None and offset is not None:
            self.offset = offset
        self.args = (self.__str__(),)
        return self


class CorruptError(KdlayoutError):
    """The input is truncated, malformed, or its headers contradict each other."""


class MissingDataError(KdlayoutError):
    """Something needed is not in the input (a symbol, a note, a page not in the dump)."""


class NotInDumpError(MissingDataError):
    """A physical address range was excluded from (or never written to) the dump."""

    def __init__(self, message: str, *, paddr: int, path: str | None = None,
                 offset: int | None = None) -> None:
        self.paddr = paddr
        super().__init__(message, path=path, offset=offset)


class UnsupportedError(KdlayoutError):
    """The input is valid but uses something kdlayout does not handle (yet)."""
