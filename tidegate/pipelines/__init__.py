"""What a session does, as composable lanes (audio, turns, reply, vision, loopback, media)
behind typed ports (:mod:`.port`), composed into modes by one registry (:mod:`.registry`); and
the records a session keeps (:mod:`.records`)."""
