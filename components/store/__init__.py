"""The model store seam: immutable versions with an index, on a PVC (filesystem) or S3."""
