"""Scoring, Lightning-free: ROUGE-L / exact match per task and category, rank classification,
results.json / predictions.jsonl, inference cost, and the README's generated result tables."""
