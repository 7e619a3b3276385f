"""Federation: peers over HTTP, placement across nodes, the wire format and the peer API."""
