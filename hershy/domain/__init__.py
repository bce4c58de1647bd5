"""The pure domain: programs, their events and effects, and the reducer. No IO here."""
