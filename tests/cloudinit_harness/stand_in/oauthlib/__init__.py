"""Stand-in for python3-oauthlib (only its presence matters to the probe)."""
