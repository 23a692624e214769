"""Layout sources: one module per place a layout fact can come from."""
