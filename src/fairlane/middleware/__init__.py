"""Dramatiq middleware that ties message processing to the ledger."""
