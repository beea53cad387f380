"""Command-line tools: weight conversion and downloads; bench/ holds the benchmark that
bench.py runs."""
