"""crmsync: two-way sync between a marketing database and Microsoft Dynamics 365."""

__version__ = "0.1.0"
