"""Fuzzing of rnnfast's file loaders (see README.md in this folder)."""
