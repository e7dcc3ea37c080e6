"""The model: its contract (features, units, outputs), training recipes, evaluation and gates."""
