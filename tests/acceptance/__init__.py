"""The reenrich command as a user runs it: a subprocess."""
