"""Watching a job run: the observer interface the pipeline reports to (`observers`), and what
listens: progress lines (`progress`), Prometheus metrics (`metrics`), log formatting (`logformat`)."""
