"""Stand-ins for services that cannot run on this machine, each following the real contract, errors included."""
