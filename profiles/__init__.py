"""Offline per-head profiles: which sparse prefill pattern and KV policy each attention head uses."""

from .schema import Profile, ProfileError, check_fingerprint, fingerprint_from_dir, load_profile, save_profile

__all__ = ["Profile", "ProfileError", "check_fingerprint", "fingerprint_from_dir", "load_profile", "save_profile"]
