"""Shared test configuration."""

import torch

# The suite runs on 2-core CI machines; keep torch from oversubscribing them.
torch.set_num_threads(2)
