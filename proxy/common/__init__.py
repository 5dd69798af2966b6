"""What every layer shares: the wire format, the turn record, outcomes, transports, labels, scrubbing."""
