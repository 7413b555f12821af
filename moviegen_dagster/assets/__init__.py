"""Media assets: one materialization per completed task ("take")."""
