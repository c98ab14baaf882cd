"""Pictures of what surgery did: layered layout and SVG cards (they read reports and traces; no report draws itself)."""
