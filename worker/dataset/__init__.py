"""The dataset tools: formats, sampling, export (JSON Lines, Parquet for the Hub), reports, cards,
validate, stats, reviews, near-duplicates, dataset versions.
"""
