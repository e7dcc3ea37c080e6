"""Watching what serves: drift of live data from a version's profile, and starting retrains."""
