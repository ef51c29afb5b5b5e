"""The ledger: every accepted job's row, the admission backlog and the stride state.

PostgreSQL in production, SQLite as the embedded default; both run the same queries.
"""
