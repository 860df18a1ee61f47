"""TOML profiles: load (with positions), extends, effective values, validation."""

from .loader import Profile, builtin_names, builtin_path, find_profile, load_profile
from .resolve import Resolved, adjust, effective, load_caps, resolve, resolve_profile
from .source import Pos, ProfileError

__all__ = ["Profile", "ProfileError", "Pos", "Resolved", "adjust", "builtin_names",
           "builtin_path", "effective", "find_profile", "load_caps", "load_profile", "resolve",
           "resolve_profile"]
