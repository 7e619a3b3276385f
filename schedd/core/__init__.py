"""The scheduler's core: the job model, validation, the engine, the store and the pure policies.

Imports neither the APIs (``schedd.api``) nor the cluster (``schedd.cluster``); it reaches
processes only through the executor seam (``schedd.executor.base``).
"""
