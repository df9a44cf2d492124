"""The spec layer: the YAML sweep spec (pydantic models, loading, checks), the typed trial
config, the grid expansion and the dry-run's display lines. Imports only ``data/`` below."""
