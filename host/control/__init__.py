"""The control plane: a workspace (SQLite database and package store) and the model registry in it
(docs/deployment.md)."""
