"""Floor 5 (io): safe weight files and converters to/from public checkpoint layouts."""
