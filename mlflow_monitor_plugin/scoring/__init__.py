"""Judges on traces: the judge table, the runner, the process pool, the judge proxy, and the
exactly-once feedback writer."""
