"""The data: data sets in memory (datasets.py), images and Parquet decoding, streamed splits, training batches."""
