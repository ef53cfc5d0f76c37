"""The dataset formats behind `captioning.data.loading.load_caption_splits`, one module each, with `OPTIONS` (the option
names it takes) and `load(source: DataSource, **options) -> {"train", "validation", "test"}`. A new format is one
more module here and one more line in `loading.FORMATS`."""
