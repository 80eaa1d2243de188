"""The one error type of the exploration tools: bad input or an index they cannot work on."""


class ExploreError(ValueError):
    """A request the exploration tools cannot serve; the message says what to change."""
