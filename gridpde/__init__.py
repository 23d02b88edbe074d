"""gridpde: infinitely deep and wide transformers as a neural PDE."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
