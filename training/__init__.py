"""recsvc training: datasets, model fitting, evaluation and publishing of model artifacts."""
