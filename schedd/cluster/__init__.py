"""Federation: peers over HTTP (peers, origin, runnode, composed by federation), the wire format and the peer API."""
