-- This instance stops: its registrations end (the peers have peer_timeout
-- to come back elsewhere) and what it had in flight goes back.
retire(S)
return reply()
