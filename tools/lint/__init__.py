"""House rules that no general linter knows, checked by ``make check`` (``python -m
tools.lint``)."""
