"""Training data from the web: parallel downloads (`downloads`), url–caption rows (`url_rows`), epoch-ordered streams
(`streams`), webdataset shards (`shards`) and the flags and splits that tie them together (`splits`)."""
