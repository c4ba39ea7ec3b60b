"""The servers the harness compares (each started in its own process group)."""
