"""HTTP: translates requests to calls and results to responses; holds no rules of its own."""
