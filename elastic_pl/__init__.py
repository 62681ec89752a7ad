"""elastic-pl: training pipeline for the ELASTIC sequential recommender."""
