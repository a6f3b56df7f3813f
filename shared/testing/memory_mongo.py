"""Two MongoDB backends for repository tests and the in-memory bus, driven through one async API.

* ``wire`` -- the real PyMongo ``AsyncMongoClient`` talking to the MongoDB stand-in
  (``nx-27017``) or to a real MongoDB when ``MONGO_URL`` says so;
* ``oracle`` -- ``mongomock`` (a mature in-process fake) behind a thin async adapter.

Every repository scenario runs on both and must give the same answer: a divergence of the
stand-in from MongoDB's semantics fails the test instead of hiding behind it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import mongomock


class _AsyncCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def sort(self, *args: Any, **kwargs: Any) -> _AsyncCursor:
        self._cursor = self._cursor.sort(*args, **kwargs)
        return self

    def skip(self, count: int) -> _AsyncCursor:
        self._cursor = self._cursor.skip(count)
        return self

    def limit(self, count: int) -> _AsyncCursor:
        self._cursor = self._cursor.limit(count)
        return self

    def __aiter__(self) -> _AsyncCursor:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._cursor)
        except StopIteration:
            raise StopAsyncIteration from None

    async def to_list(self, length: int | None = None) -> list[Any]:
        return list(self._cursor)[:length] if length else list(self._cursor)


class _AsyncCollection:
    """The subset of ``AsyncCollection`` the repositories use, over a mongomock collection."""

    _ASYNC: ClassVar[set[str]] = {
        "insert_one",
        "insert_many",
        "find_one",
        "update_one",
        "update_many",
        "replace_one",
        "delete_one",
        "delete_many",
        "find_one_and_update",
        "count_documents",
        "create_index",
        "drop",
        "distinct",
    }

    def __init__(self, collection: mongomock.Collection) -> None:
        self._collection = collection

    def find(self, *args: Any, **kwargs: Any) -> _AsyncCursor:
        return _AsyncCursor(self._collection.find(*args, **kwargs))

    @property
    def database(self) -> AsyncMongomockDatabase:
        return AsyncMongomockDatabase.wrapping(self._collection.database)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._collection, name)
        if name not in self._ASYNC:
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            return attribute(*args, **kwargs)

        return call


class AsyncMongomockDatabase:
    def __init__(self, name: str) -> None:
        self._db = mongomock.MongoClient(tz_aware=True)[name]

    @classmethod
    def wrapping(cls, db: mongomock.Database) -> AsyncMongomockDatabase:
        wrapper = cls.__new__(cls)
        wrapper._db = db
        return wrapper

    def __getitem__(self, name: str) -> _AsyncCollection:
        return _AsyncCollection(self._db[name])

    @property
    def name(self) -> str:
        return self._db.name
