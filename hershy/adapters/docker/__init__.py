"""The Docker (gVisor) runtime adapter, split by job as Nomad's docker driver is."""
