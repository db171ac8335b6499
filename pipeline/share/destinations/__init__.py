"""Receivers of shared intelligence behind one interface (:class:`~pipeline.share.destinations.base.Destination`)."""
