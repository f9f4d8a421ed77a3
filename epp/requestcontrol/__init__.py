"""Per-request policy before scheduling: model rewrites, objectives (priority), admission."""
