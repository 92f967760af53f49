"""docbus."""
