"""What turns did and cost: the request-log writer, refused requests' rows, roll-up, metrics, traces."""
