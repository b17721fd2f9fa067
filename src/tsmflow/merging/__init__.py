"""Model merging: DeMe's task-vector merge and its weight search."""
