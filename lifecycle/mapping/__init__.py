"""The mapping file (schema and loader), sandboxed templates, naming candidates and the pure planner."""
