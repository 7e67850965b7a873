"""The package version, in the foundations layer so that run records can name it without importing the
package's public facade (`steerguide/__init__.py`, which sits above the engine)."""

__version__ = "0.1.0"
