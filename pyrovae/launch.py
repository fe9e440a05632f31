"""Which process this is, as a launcher (torchrun) says in the environment: known before torch
is imported, so the command line can ask it before it chooses its thread policy."""

from __future__ import annotations

import os

# The environment variables torchrun (and torch.distributed's env:// rendezvous) sets.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without one)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    """This process's rank among them (``RANK``; 0 without a launcher)."""
    try:
        return int(os.environ.get("RANK", "0")) if processes() > 1 else 0
    except ValueError:
        return 0


def launched() -> bool:
    """Whether this process is one of more than one that a launcher started with everything
    ``torch.distributed``'s env:// rendezvous needs."""
    return processes() > 1 and all(v in os.environ for v in ENV_VARS)
