"""Provider adapters behind one Backend interface."""
