"""Bounded integers for API input: a number the database cannot store is a 422, never a 500."""

from typing import Annotated, Generic, TypeVar

from ninja import Schema
from pydantic import Field

DB_ID_MAX = 2**63 - 1  # BigAutoField: SQLite INTEGER, PostgreSQL bigint
DB_INT_MAX = 2**31 - 1  # IntegerField / PositiveIntegerField on PostgreSQL

Id = Annotated[int, Field(ge=1, le=DB_ID_MAX)]
Offset = Annotated[int, Field(ge=0, le=DB_ID_MAX)]
Seed = Annotated[int, Field(ge=-DB_INT_MAX - 1, le=DB_INT_MAX)]

T = TypeVar("T")


class ListOut(Schema, Generic[T]):
    """Every list endpoint answers `{items, count}`: one page of items and the total matching the
    filters (independent of limit/offset), so a client can page without guessing."""

    items: list[T]
    count: int = Field(..., ge=0, description="How many items match the filters, over all pages.")
