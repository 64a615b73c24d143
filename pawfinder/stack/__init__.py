"""The local PawFinder stack: MLflow, Prefect, a Ray head, the deployments runner, Ray Serve and the console.

``processes`` is a generic PID-file process manager, ``services`` lists the stack's services, ``lifecycle`` brings
a list of services up and down, ``bootstrap`` trains a first champion. ``pawfinder stack up|down|status`` drives it.
"""
