"""Exploring a whole index: duplicate groups, clusters and a 2-D map (docs/explore.md).

One module per job: :mod:`.neighbours` (kNN graph), :mod:`.grouping` (groups with a chain
guard), :mod:`.edits` + :mod:`.calibrate` (the ``auto`` threshold), :mod:`.similar` (similar
shots, the third tier), :mod:`.keep` (keep/remove), :mod:`.clusters`, :mod:`.projection`,
:mod:`.cache` (per index generation), :mod:`.embeddings` (the index's vectors or the native copy
embedding), :mod:`.sheets` (PNGs), :mod:`.reports` (report folders),
:mod:`.planted` (the planted-duplicate evaluation); :class:`.explorer.Explorer` ties them to one
collection for the CLI and the app.
"""

from .collection import Collection, from_index
from .errors import ExploreError
from .explorer import CalibrationOptions, Duplicates, Explorer

__all__ = ["CalibrationOptions", "Collection", "Duplicates", "ExploreError", "Explorer", "from_index"]
