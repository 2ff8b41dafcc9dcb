"""The tools around a job, each a subcommand: `pack` images into TFRecords, `inspect` a model,
`evaluate` results against ground truth, `report` a job as one HTML page, `visualize` its
detections; `annotate` and `svg` draw for them."""
