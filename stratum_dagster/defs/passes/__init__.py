"""Pass assets, verify checks and jobs, built from the pass registry."""
