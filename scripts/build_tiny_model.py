"""Build the tiny random-weight Llama served on machines without a GPU (see serve_app/tiny_model.py).

python scripts/build_tiny_model.py [--out DIR] [--force]
"""

import sys

from serve_app.tiny_model import main

if __name__ == "__main__":
    sys.exit(main())
