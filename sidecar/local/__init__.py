"""Local model servers on this machine: finding them, pulling models, and the host watch."""
