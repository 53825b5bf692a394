"""Reading, checking, cleaning, splitting and rendering datasets."""
