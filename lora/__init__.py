"""A reproducible replication of LoRA (Hu et al., 2021) and the baselines it is compared against."""

__version__ = "0.1.0"
