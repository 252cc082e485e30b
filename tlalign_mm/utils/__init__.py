"""Small helpers that are not part of the TL-Align method itself (``checkout.py``: which checkout is installed)."""
