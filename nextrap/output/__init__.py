"""How outputs reach the disk: checked, locked and atomic (:mod:`.atomic`); one writer per kind of output
(PEFT adapter, TRL checkpoint, merged weights)."""
