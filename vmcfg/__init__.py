"""vmcfg: craft, check, export and run Intel VT-x execution environments."""

__version__ = "0.1.0"
