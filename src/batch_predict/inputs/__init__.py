"""Where records come from: input files found by pattern (`sources`), read as TFRecords
(`tfrecord`, with `tf_example`'s parser for `tf.train.Example` records) or JSON lines, and cut
into units of work (`units`)."""
