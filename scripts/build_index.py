"""Build or update a nearest-neighbour index (FAISS + SQLite metadata) from a trained checkpoint.

    # the checkpoint's memory bank (the training images; nothing is re-embedded)
    python scripts/build_index.py --checkpoint RUN_DIR/checkpoint.pt --out INDEX_DIR
    # any folder or .tar/.tar.gz archive, embedded with the checkpoint's encoder
    python scripts/build_index.py --checkpoint RUN_DIR/checkpoint.pt --out INDEX_DIR --images PATH
    # update an existing index
    python scripts/build_index.py --out INDEX_DIR --add PATH
    python scripts/build_index.py --out INDEX_DIR --remove train/cat/0001.png train/dog
    # embed a large gallery on N GPUs / processes (each embeds a shard, rank 0 merges and builds)
    torchrun --nproc_per_node=N scripts/build_index.py --checkpoint C --out INDEX_DIR --images PATH
    # ... or as N independent jobs (job array, several machines on a shared filesystem), then merge
    python scripts/build_index.py --checkpoint C --out INDEX_DIR --images PATH --shards N --shard-id I
    python scripts/build_index.py --checkpoint C --out INDEX_DIR --merge-shards N

Exactly one mode per call (build, update, shard, merge, or torchrun): see index/cli.py.

--index-type: auto (Flat below 1M vectors, IVF above; over --memory-budget IVF-SQ8, then IVF-PQ;
approximate types are tuned to --target-recall), flat, ivf, ivfsq, ivfpq, hnsw, or any FAISS factory string
("IVF1024,Flat", "IVF4096,PQ32", "HNSW32,Flat"). See docs/index.md.
"""

import sys

from index.cli import main

if __name__ == "__main__":
    sys.exit(main())
