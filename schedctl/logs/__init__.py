"""A job's output for `schedctl logs`: read where it is (local: the file on this machine;
remote: through the daemon's ReadOutput for a job on another node) and written to stdout
raw or as JSON (sinks)."""
