"""The item catalogue: its columns and snapshots, the vector index, candidate lists and the durable journal."""
