"""The `warren` command line: seed, demo, projections, and operations tools."""
