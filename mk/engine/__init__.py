"""Loading, analysis, scheduling and the command line."""
