"""`postal bench http`: Postal's cached GET over HTTP next to a bare route and a plain Redis app,
on the same server and worker count, under wrk or the built-in load generator."""
