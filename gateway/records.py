"""@record: a frozen dataclass to the type checker, a plain slotted one at run time.

A frozen dataclass sets each field in __init__ through `object.__setattr__`, to get past its own
refusing __setattr__: 1.6 µs to make a RerankRequest against 0.4 for the same class unfrozen, and
the value types a miss makes (the request, its batches, lookups, plan steps, reservations,
settlements) were 4% of its instructions (docs/bench-history.md, "A lighter miss"). For those, @record
keeps the promise where it is checked, by mypy in CI (`x.field = ...` is an error: the fields are
read-only), and drops the check at run time. Equal fields still mean equal and the same hash, as
frozen gives; `eq=False` keeps identity, as it does for a frozen dataclass.

Types made once per config or per status page stay `@dataclass(frozen=True)`: there the run-time
check costs nothing that matters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

_T = TypeVar("_T")


@overload
def record(cls: type[_T], /) -> type[_T]: ...
@overload
def record(*, eq: bool = True) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def record(cls: type[_T] | None = None, /, *, eq: bool = True) -> Any:
    def make(target: type[_T]) -> type[_T]:
        # unsafe_hash: a hash from the fields, as frozen=True gives an eq class (none with eq=False).
        return dataclasses.dataclass(slots=True, eq=eq, unsafe_hash=eq)(target)

    return make if cls is None else make(cls)
