"""Posts: the domain's data and rules (`models`, `errors`) and its use cases (`service`)."""
