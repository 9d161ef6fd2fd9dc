"""The command line: the ``nextrap`` group (:mod:`.main`), its commands, and the support they share."""
