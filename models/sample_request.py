"""Print a POST /v1/predict body with one synthetic window: `python -m models.sample_request [seed]`."""
import json
import sys

from models.data import sample_windows

if __name__ == "__main__":
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    print(json.dumps({"window": sample_windows(1, seed)[0].tolist(), "request_id": f"example-{seed}"}))
