"""The repository itself: layering, lint, packaging."""
