"""The enrichment contract: parsed-input models, validation, the pure `enrich`, key order, and the
stored row -> outcome step with its hashes.
"""
