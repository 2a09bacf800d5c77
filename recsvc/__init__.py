"""recsvc core: config, domain types, artifacts, registry and the recommendation engine."""
