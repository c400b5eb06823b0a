"""Benchmarks outside the test suite, each a module of what it measures on one harness (`harness`: models, variants,
interleaved timing, memory, Markdown + CSV reports via pandas): LoRA vs peft vs full FT (`lora_core`), Table 1 and
Figure 5 latency (`latency`, `figure5`), training cost per method (`training`), checkpoint size (`storage`), the
cost curve (`cost`), the fast-path switches (`fast_path`, switches in `switches`), MFU (`mfu`, formula in `flops`)
and profiler traces (`trace`). Run them with `experiments/bench.py`."""
