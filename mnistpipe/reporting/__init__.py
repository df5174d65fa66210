"""Reporting layer: figures, the Markdown templates and the model card (the report stage)."""
