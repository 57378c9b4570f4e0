"""halo-lifecycle: HaloITSM user events become idempotent Active Directory and Microsoft 365 changes."""

__version__ = "0.1.0"
