"""Adapters to other people's training frameworks; each submodule imports its framework, nothing here does."""
