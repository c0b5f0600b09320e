"""The observe stage: quality windows over time, their charts and dataset, live metrics, health."""
