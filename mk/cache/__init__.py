"""Content-addressed storage: blobs, action results and the stat cache."""
