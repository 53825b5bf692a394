"""What the two web servers share (see common.py)."""
