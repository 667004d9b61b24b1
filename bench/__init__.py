"""asv benchmarks for xbatch (asv imports this folder as a package); see README.md."""
