"""Control plane: Cyclone DDS topics for lifecycle, heartbeats, requests, events, config, traces."""
