"""The tamper-evident audit log: records chained by hash, Merkle checkpoints, two stores."""
