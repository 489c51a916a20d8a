"""Rich rendering for the CLI: report tables, progress bars, the live training table.

The library never imports this package; commands pass library results to it.
"""
