"""modelzip: make neural networks smaller and faster, and say honestly what it costs."""

__version__ = "0.1.0"
