"""PostgreSQL: schema migrations (Alembic) and connections."""
