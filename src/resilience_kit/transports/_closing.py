"""What every transport and subscriber shares: ``async with`` closes it, closed refuses work."""

from __future__ import annotations

from types import TracebackType

from typing_extensions import Self

__all__ = ("Closing",)


class Closing:
    """A base for objects closed by `aclose`: ``async with`` closes them on exit.

    Subclasses set ``self._closed`` and implement `aclose`.
    """

    __slots__ = ()

    _closed: bool

    async def aclose(self) -> None:
        """Release the object's resources; later calls do nothing."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
