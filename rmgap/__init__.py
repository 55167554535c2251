"""rmgap: why a language model makes a poor implicit reward model. See README.md."""

__version__ = "0.1.0"
