"""Several processes: DDP / FSDP2 through accelerate, and ZeRO-style sharded optimizer state."""
