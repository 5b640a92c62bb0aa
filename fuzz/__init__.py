"""Fuzzing of the request and response paths: see fuzz/README.md."""
