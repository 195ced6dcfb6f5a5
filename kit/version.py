"""kit's version, importable from inside the package without importing the package's lazy attributes."""
__version__ = "0.1.0"
