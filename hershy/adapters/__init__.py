"""Adapters: the ports of the service layer, implemented against the outside world."""
