"""The Typer command-line interface: parsing and presentation only; the library does the work."""
