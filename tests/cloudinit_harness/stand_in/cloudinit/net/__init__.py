"""Network rendering."""
