"""The servers the harness compares (each started in its own process group)."""

# The members every peer serves, as graphs/ensemble.yaml deploys them (model, version).
MEMBERS = (("xgboost", "v1"), ("lightgbm", "v1"), ("patchtst", "v1"), ("lstm", "v1"), ("nhits", "v1"))
