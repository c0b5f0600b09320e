"""The monitor's configuration: the Databricks-compatible objects, their storage in experiment
tags, and the public API functions over them."""
