"""Search ranges of a sweep file: ``[low, high]`` or ``{low: L, high: H}``, validated.

A real range samples on a log scale with ``log: true`` (or ``[low, high, log]``); an integer
range has a ``step`` (``[low, high, step]`` or ``{low:, high:, step:}``). Anything else is
refused with the spellings that are accepted.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

FLOAT_SPELLINGS = "write a range as [low, high] or {low: L, high: H}; add log: true (or write " \
                  "[low, high, log]) to sample on a log scale"
INT_SPELLINGS = "write an integer range as [low, high] or {low: L, high: H}, with an optional " \
                "step ([low, high, step] or step: S)"


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.low >= self.high:
            raise ValueError(f"low={self.low} must be below high={self.high}")
        return self


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class FloatRange(_Range):
    """A real interval to search."""

    low: float = Field(gt=0)
    """Smallest value."""
    high: float = Field(gt=0)
    """Largest value."""
    log: bool = False
    """Sample on a log scale."""

    @model_validator(mode="before")
    @classmethod
    def _spelling(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return data
        if isinstance(data, list | tuple) and len(data) in (2, 3) and all(
                _is_number(v) for v in data[:2]) and (len(data) == 2 or data[2] == "log"):
            return {"low": data[0], "high": data[1], "log": len(data) == 3}
        raise ValueError(f"got {data!r}: {FLOAT_SPELLINGS}")


class IntRange(_Range):
    """An integer interval to search."""

    low: int = Field(ge=1)
    """Smallest value."""
    high: int = Field(ge=1)
    """Largest value."""
    step: int = Field(default=8, ge=1)
    """Spacing of the values (d_model: keep it a multiple of the shape's d_model_multiple)."""

    @model_validator(mode="before")
    @classmethod
    def _spelling(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return data
        if isinstance(data, list | tuple) and len(data) in (2, 3) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in data):
            return dict(zip(("low", "high", "step"), data, strict=False))
        raise ValueError(f"got {data!r}: {INT_SPELLINGS}")

    @model_validator(mode="after")
    def _on_step(self) -> IntRange:
        if (self.high - self.low) % self.step:
            raise ValueError(f"high - low = {self.high - self.low} must be a multiple of "
                             f"step={self.step}")
        return self
