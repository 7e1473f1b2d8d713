-- Nothing of its own: the acks this instance holds are applied by every script.
return reply()
