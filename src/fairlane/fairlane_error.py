"""The root of fairlane's exceptions.

It sits at the bottom of the import graph (it imports nothing of fairlane), so every layer's
errors, the ledger's and the settings' included, can derive from it: ``except
fairlane.FairlaneError`` catches whatever fairlane raises to its users.
"""

from __future__ import annotations


class FairlaneError(Exception):
    """Base class of the exceptions fairlane raises to its users."""


__all__ = ["FairlaneError"]
