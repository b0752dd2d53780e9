"""`postal bench http`: Postal's cached GET over HTTP, near cache on and off, next to a bare route
and a plain Redis app, on the same server and worker count, under wrk or the built-in load
generator; req/s, latency and the server's CPU a request."""
