"""Benchmarks outside the test suite: LoRA's cost against peft and full fine-tuning (`lora_core`), and the paper's
Table 1 inference latency (`latency`). Run them with `experiments/bench.py`."""
