"""mta_ext (alignment branch placeholder; the lead's __init__ replaces this on merge)."""
