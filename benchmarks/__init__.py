"""Speed and memory benchmarks, each a ratio against a named peer measured in the same run."""
