"""Tools that sit outside the pipeline core."""
