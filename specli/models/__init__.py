"""Which files to run: the curated catalogue (models.toml), Hugging Face downloads and
the draft/target compatibility check."""
