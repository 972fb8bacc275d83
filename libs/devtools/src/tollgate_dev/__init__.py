"""Development and test platform for Tollgate (never deployed)."""
