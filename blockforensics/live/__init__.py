"""Methods 1–3 on a running QEMU: real dirty-bitmap tracking, image-fleecing
snapshots, head start and quiescence writes, driven over QMP and read over NBD."""
