"""Operations: the CLI, the supervisor, embedded servers and the maintenance tools (rebuild, reconcile, audit)."""
