"""Persistence: the schema, the record writer with its journal, and the queries of the API.

See docs/persistence.md. The media path sees only :class:`~.records.Recorder.record`.
"""
