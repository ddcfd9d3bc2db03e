"""The one exception of queries/: something the user can fix (name, parameter, results)."""


class QueryError(Exception):
    """A user-facing error: unknown query/parameter, missing results, empty filter, SQL error."""
