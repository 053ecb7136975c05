"""Over-the-air updates: a TUF repository of signed bundles, and a device updater with A/B slots and rollback.

    repository.py  publisher side: python-tuf metadata, releases and deltas as targets, key rotation, refresh
    server.py      static HTTP on 127.0.0.1 for the repository's public/ folder
    updater.py     device side: python-tuf Updater (fsynced, time floor) + policy + install + health + rollback
    fetcher.py     the network seam with a wall-clock deadline and a minimum rate
    slots.py       two slots, one durable pointer, the release counter
    disk.py        the file-system operations an install is made of (real, or simulated by simdisk.py)
    packing.py     canonical tar and a distrustful unpacker;  delta.py: bsdiff4 deltas with base/result checks
    health.py      signature, hashes and golden inputs;  config.py: bounds with units

Nothing here is imported by ``edgeslm.runtime``; the updater needs the ``ota`` extra (tuf, cryptography, bsdiff4).
"""
