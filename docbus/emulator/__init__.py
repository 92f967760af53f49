"""docbus/emulator."""
