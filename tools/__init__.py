"""Command-line tools: weight conversion and downloads."""
