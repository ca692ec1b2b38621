"""Domain services: each takes the database session it works in; callers own the transaction."""
