"""Plumbing every layer uses: lazy exports, validation, progress bars, thread and device choice, reading
regular files only and the inputs-vs-outputs rule, option metadata."""
