"""Weight quantization (bitsandbytes 8/4-bit)."""
