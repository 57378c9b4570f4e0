"""Everything about HaloITSM: payload models, webhook authentication, event parsing."""
