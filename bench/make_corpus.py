#!/usr/bin/env python3
"""Build the Triton cache corpus the bench uses (>= 500 kernel directories).

    .venv/bin/python bench/make_corpus.py [-n 500] [--base DIR] [--rebuild]

Compiles the seed kernels in pyruntime/bench/_corpus_kernels.py for
GPUTarget("cuda", 90, 32) (no GPU needed) and replicates their cache
directories under new hash names (the .json metadata fixed up to match).
`python -m pyruntime.bench` does the same on first use and reuses the result;
this script only lets you build it ahead of time or rebuild it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyruntime.bench._corpus import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
