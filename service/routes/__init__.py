"""One router module per resource, over the one engine."""
