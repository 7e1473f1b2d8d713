-- This instance stops: its parked waits end (the peers have peer_timeout
-- to come back elsewhere) and what it had in flight goes back.
retire(S)
return reply()
