"""The Prefect deployments of PawFinder, served by one long-running process (``python -m flows.deployments``).

``flow.serve``-style runner: no work pool or worker to manage. Schedules are NOT paused when the process stops
(``pause_on_shutdown=False``), and re-serving upserts the same deployments, so schedules survive restarts.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.training import training_pipeline
from pawfinder.settings import Settings


def deployments(settings: Settings) -> list[RunnerDeployment]:
    """Every deployment this runner serves: training (manual runs, plus cron when ``PAWFINDER_TRAINING_CRON``)."""
    return [
        training_pipeline.to_deployment(
            name="training-pipeline",
            cron=settings.training_cron,
            description="Download → prepare → train on Ray → evaluate → register challenger → gated promotion.",
            tags=["pawfinder", "training"],
        ),
    ]


def main() -> None:
    """Serve the deployments until interrupted."""
    serve(*deployments(Settings()), pause_on_shutdown=False)


if __name__ == "__main__":
    main()
