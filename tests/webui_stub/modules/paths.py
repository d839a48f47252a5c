"""``modules.paths``: ``models_path`` (set by tests to a temporary folder)."""
models_path = "models"
