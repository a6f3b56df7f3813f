"""Tools for tests and benchmarks, never imported by a running service.

* :mod:`shared.testing.bus` -- an in-memory bus that routes events to handler tables as
  RabbitMQ would, for fast tests of the saga without processes;
* :mod:`shared.testing.memory_mongo` -- ``mongomock`` behind PyMongo's async API;
* :mod:`shared.testing.system` -- the whole system as local processes (tests, chaos, bench).
"""
