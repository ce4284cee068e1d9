"""The one error every backend raises for a graph it cannot lower."""


class LoweringError(RuntimeError):
    """The graph holds an op or a form this backend cannot lower; the message names the
    node, and what to do where there is something (another backend, a pipeline)."""
