"""Command-line tools. A package (not a namespace) so that `from scripts.x import` in
the entry points finds this folder first, not a `scripts` package installed elsewhere."""
