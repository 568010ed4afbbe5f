"""Shared machinery of every podium task: run directories, manifests, MLflow, resume, errors."""

from src.core.resolvers import register_resolvers

register_resolvers()
