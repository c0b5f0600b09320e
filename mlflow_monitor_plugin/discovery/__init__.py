"""Which traces are due: paged discovery of finished traces, the checkpoint cursor, and sampling."""
