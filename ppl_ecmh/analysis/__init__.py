"""What a run is turned into for people: ArviZ diagnostics (`diagnostics`), figures (`plots`) and
reports (`report`)."""
