"""The Oxford-IIIT Pet data: download, annotations and splits, robust image decoding, verification, the prepared
image cache with its manifest, and dataset statistics. Import the submodules directly (this package stays light)."""
