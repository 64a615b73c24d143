"""Prefect flows of PawFinder: the training pipeline (Ray jobs) and the deployments that serve it."""
