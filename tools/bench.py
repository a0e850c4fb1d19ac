#!/usr/bin/env python3
"""Benchmark jitkern against fp16 F.linear and peers; see jitkern/bench.py for the method."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jitkern.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
