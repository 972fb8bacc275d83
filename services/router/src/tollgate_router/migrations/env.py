from tollgate_core.db import run_alembic_env

run_alembic_env(schema="router")
