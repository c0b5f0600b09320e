"""Alerts: rules evaluated on quality windows, incidents persisted, messages delivered once."""
