"""Where outcomes go: each unit's result and error shards, written and committed (`sinks`,
in a format of `result_formats`), the job's commit records for resuming (`jobstate`), its
timeline (`timeline`), and a finished job's outputs read back (`reading`)."""
