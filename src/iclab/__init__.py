"""iclab: a laboratory for the theory of in-context learning in transformers."""

__version__ = "0.1.0"
