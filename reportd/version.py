"""The release, in one place for the package, the CLI and the build_info series."""

__version__ = "0.1.0"
