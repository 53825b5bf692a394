"""Hardware detection and (later) memory/time planning."""
