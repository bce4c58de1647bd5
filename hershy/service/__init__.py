"""The service layer: supervisors, the registry and the Watch hub, on top of ports."""
