"""PawFinder core: breeds, settings, data, preprocessing, models, registry and CLI shared by every app."""

__version__ = "0.1.0"
